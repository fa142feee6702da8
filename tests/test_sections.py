"""Section detection and document structure on the project's own synthetic dictations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.records import DictationMeta, Note
from pipeline.documents.sections import (
    detect_document_type,
    detect_headings,
    lexicon_for,
    structure,
)
from pipeline.documents.templates import DOCUMENT_TYPES, get_template, list_templates

DATA = Path(__file__).parent / "data" / "documents"
EXPECTED = json.loads((DATA / "sections.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_section_found_with_document_type_given(name: str, settings) -> None:
    """100% of the sections of each synthetic dictation are found, in order, non-empty."""
    expected = EXPECTED[name]
    text = (DATA / name).read_text(encoding="utf-8")
    doc = structure(Note(text=text), DictationMeta(document_type=expected["type"]), settings)
    assert doc.document_type == expected["type"]
    assert [s.key for s in doc.sections] == expected["keys"]
    assert all(s.text.strip() for s in doc.sections)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_document_type_detected_from_content(name: str, settings) -> None:
    """Without a sidecar the template is chosen from the dictation itself."""
    text = (DATA / name).read_text(encoding="utf-8")
    doc = structure(Note(text=text), None, settings)
    assert doc.document_type == EXPECTED[name]["type"]
    assert [s.key for s in doc.sections] == EXPECTED[name]["keys"]


def test_every_document_type_has_a_synthetic_text() -> None:
    assert {e["type"] for e in EXPECTED.values()} == set(DOCUMENT_TYPES)


def test_section_text_lands_in_the_right_field(settings) -> None:
    text = (DATA / "operative_written.txt").read_text(encoding="utf-8")
    doc = structure(Note(text=text), DictationMeta(document_type="operative_report"), settings)
    by_key = {s.key: s.text for s in doc.sections}
    assert by_key["estimated_blood_loss"] == "15 mL."
    assert by_key["preoperative_diagnosis"] == "Right inguinal hernia."
    assert "polypropylene mesh" in by_key["description"]
    assert "4-0 Monocryl" in by_key["description"]  # second paragraph stays in its section
    assert "\n\n" in by_key["description"]
    # the spoken preamble with the header data is not a section
    assert not any("dictating" in s.text for s in doc.sections)


@pytest.mark.parametrize(
    ("text", "key", "content"),
    [
        ("PREOPERATIVE DIAGNOSIS: Acute cholecystitis.", "preoperative_diagnosis",
         "Acute cholecystitis."),
        ("preoperative diagnosis colon acute cholecystitis.", "preoperative_diagnosis",
         "Acute cholecystitis."),
        ("Preoperative diagnosis is acute cholecystitis.", "preoperative_diagnosis",
         "Acute cholecystitis."),
        ("Preoperative diagnosis, acute cholecystitis.", "preoperative_diagnosis",
         "Acute cholecystitis."),
        ("Pre-op diagnosis: acute cholecystitis.", "preoperative_diagnosis",
         "Acute cholecystitis."),
        ("Preoperative Diagnoses\nAcute cholecystitis.", "preoperative_diagnosis",
         "Acute cholecystitis."),
        ("EBL: 50 mL.", "estimated_blood_loss", "50 mL."),
        ("Estimated blood loss 50 mL.", "estimated_blood_loss", "50 mL."),
        ("Procedures performed: laparoscopic cholecystectomy.", "procedure",
         "Laparoscopic cholecystectomy."),
        ("Details of the procedure: the patient was placed supine.", "description",
         "The patient was placed supine."),
    ],
)
def test_heading_variants(text: str, key: str, content: str, settings) -> None:
    """Written, spoken ("colon", "is", comma), hyphenated, plural and abbreviated headings."""
    doc = structure(Note(text=text), DictationMeta(document_type="operative_report"), settings)
    assert [(s.key, s.text) for s in doc.sections] == [(key, content)]


@pytest.mark.parametrize(
    "prose",
    [
        "The procedure was uneventful and the patient went to recovery.",
        "She has a past medical history of diabetes and hypertension.",
        "Findings were discussed with the family.",
        "History of diabetes for ten years.",
        "The plan is to continue metformin.",
    ],
)
def test_prose_is_not_a_heading(prose: str, settings) -> None:
    """Heading words inside ordinary sentences do not split the text."""
    for doc_type in DOCUMENT_TYPES:
        spec = get_template(doc_type, settings)
        lex = lexicon_for(spec, list_templates(settings).values())
        assert detect_headings("The patient is well. " + prose, lex) == [], doc_type


def test_second_procedure_heading_is_the_description(settings) -> None:
    """MTSamples-style reports say PROCEDURE twice: the title, then the narrative."""
    text = ("PROCEDURE: Colonoscopy.\nANESTHESIA: MAC.\n"
            "PROCEDURE: The scope was advanced to the cecum. Withdrawal was slow.")
    doc = structure(Note(text=text), DictationMeta(document_type="operative_report"), settings)
    by_key = {s.key: s.text for s in doc.sections}
    assert by_key["procedure"] == "Colonoscopy."
    assert by_key["description"].startswith("The scope was advanced")


def test_missing_required_sections_listed(settings) -> None:
    text = "PREOPERATIVE DIAGNOSIS: Hernia.\nPROCEDURE: Repair.\nANESTHESIA: General."
    doc = structure(Note(text=text), DictationMeta(document_type="operative_report"), settings)
    assert doc.missing == [
        "Postoperative diagnosis", "Description of procedure", "Estimated blood loss",
        "Complications",
    ]


def test_unknown_heading_from_another_template_kept_as_extra_section(settings) -> None:
    """Text under a heading the template lacks is never dropped."""
    text = ("PREOPERATIVE DIAGNOSIS: Hernia.\nPAST MEDICAL HISTORY: Asthma.\n"
            "PROCEDURE: Repair.")
    doc = structure(Note(text=text), DictationMeta(document_type="operative_report"), settings)
    extra = [s for s in doc.sections if s.key == "past_medical_history"]
    assert extra and extra[0].text == "Asthma." and extra[0].heading == "Past medical history"


def test_text_without_headings_is_kept_in_body(settings) -> None:
    text = "Knee swelling is better. Range of motion full."
    doc = structure(Note(text=text), DictationMeta(document_type="progress_note"), settings)
    assert doc.sections[0].key == "body"
    assert doc.sections[0].text == text
    assert "no_sections" in doc.flags


def test_empty_note(settings) -> None:
    doc = structure(Note(text=""), DictationMeta(document_type="radiology_report"), settings)
    assert doc.sections == []
    assert doc.missing == ["Examination", "Clinical history", "Findings", "Impression"]


def test_sidecar_alias_and_unknown_type(settings) -> None:
    text = (DATA / "radiology_report.txt").read_text(encoding="utf-8")
    assert structure(Note(text=text), DictationMeta(document_type="radiology"),
                     settings).document_type == "radiology_report"
    doc = structure(Note(text=text), DictationMeta(document_type="tax_return"), settings)
    assert doc.document_type == "radiology_report"
    assert "unknown_document_type" in doc.flags


def test_letter_salutation_and_closing_are_not_body_text(settings) -> None:
    text = (DATA / "consult_letter.txt").read_text(encoding="utf-8")
    doc = structure(Note(text=text), DictationMeta(document_type="consult_letter"), settings)
    joined = " ".join(s.text for s in doc.sections)
    assert "Dear" not in joined and "Sincerely" not in joined
    assert doc.header["recipient"].value == "Dr. Moreno"


def test_detect_document_type_scores(settings) -> None:
    templates = list_templates(settings)
    key, score = detect_document_type("IMPRESSION: Normal chest. FINDINGS: Clear lungs. "
                                      "COMPARISON: None.", templates)
    assert key == "radiology_report" and score > 0
    assert detect_document_type("", templates) == ("progress_note", 0.0)


def test_hostile_text_is_cleaned(settings) -> None:
    text = "FINDINGS: bad\x00byte\x0b and <script>alert(1)</script> & more \U0001F600"
    doc = structure(Note(text=text), DictationMeta(document_type="radiology_report"), settings)
    findings = doc.sections[0].text
    assert "\x00" not in findings and "\x0b" not in findings
    assert "<script>alert(1)</script> & more \U0001F600" in findings


def _write_mtsamples_like(path: Path) -> None:
    """A tiny CSV in the MTSamples layout, with reports the project wrote."""
    import csv
    import lzma

    reports = [
        ("Surgery", "PREOPERATIVE DIAGNOSIS: Hernia.\n\nPOSTOPERATIVE DIAGNOSIS: Same.\n\n"
                    "PROCEDURE: Repair.\n\nANESTHESIA: General.\n\nDESCRIPTION OF PROCEDURE: "
                    "The procedure was uneventful. Mesh was placed.\n\nESTIMATED BLOOD LOSS: "
                    "Minimal.\n\nCOMPLICATIONS: None."),
        ("Radiology", "EXAM: Chest x-ray.\n\nHISTORY: Cough.\n\nFINDINGS: Lungs are clear.\n\n"
                      "IMPRESSION: Normal chest."),
    ]
    with lzma.open(path, "wt", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "medical_specialty", "sample_name", "description",
                         "transcription", "keywords"])
        for specialty, text in reports:
            writer.writerow(["", specialty, "x", "x", text, ""])


def test_sections_eval_command(tmp_path, monkeypatch, capsys) -> None:
    """`dictation sections-eval` scores heading detection in three text forms."""
    from pipeline.cli import main
    from pipeline.commands.sections import evaluate
    from pipeline.core.settings import get_settings

    monkeypatch.setenv("DICTATION_DATA_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    data = tmp_path / "samples.csv.xz"
    _write_mtsamples_like(data)
    results = evaluate(data)
    op = results["operative"]
    assert op["written"].reports == 1 and op["written"].truth_known == 7
    assert op["written"].precision == 1.0 and op["written"].recall == 1.0
    assert op["spoken"].recall == 1.0 and op["runon"].recall == 1.0
    assert results["radiology"]["written"].recall == 1.0
    assert results["consult"]["written"].reports == 0
    assert main(["sections-eval", str(data)]) == 0
    out = capsys.readouterr().out
    assert "operative   written        1     1.000   1.000" in out
    get_settings.cache_clear()


def test_letter_keeps_dictated_order_and_prose_after_a_list_field(settings) -> None:
    """In a letter, a paragraph after MEDICATIONS is letter prose again, in dictated order."""
    text = ("Dear Dr. Abernathy,\n\nI would be grateful if you could see this patient.\n\n"
            "CURRENT MEDICATIONS: Sumatriptan 50 mg as needed.\n\n"
            "I would value your advice on preventive treatment.\n\n"
            "REASON FOR REFERRAL: Migraine.\n\nYours sincerely,\nDr. Patel")
    doc = structure(Note(text=text), DictationMeta(document_type="referral_letter"), settings)
    assert [(s.key, s.text) for s in doc.sections] == [
        ("body", "I would be grateful if you could see this patient."),
        ("medications", "Sumatriptan 50 mg as needed."),
        ("body", "I would value your advice on preventive treatment."),
        ("reason_for_referral", "Migraine."),
    ]
    assert doc.missing == []


def _sample_refs(samples_dir: Path) -> list[Path]:
    return sorted((samples_dir / "synthetic_medical").glob("*.ref.txt"))


def test_spoken_samples_structure_like_their_expected_text(settings, samples_dir) -> None:
    """Integration with the normalizer: each sample's spoken script, normalized, gives the same
    sections as the sample's expected document text (and the same document type)."""
    from pipeline.ingest.sidecar import parse_sidecar
    from pipeline.language import normalize

    refs = _sample_refs(samples_dir)
    if not refs:
        pytest.skip("samples/synthetic_medical has no reference scripts yet")
    for ref in refs:
        stem = ref.name.removesuffix(".ref.txt")
        side = ref.with_name(f"{stem}.json")
        meta = parse_sidecar(side.read_text(encoding="utf-8"), name=side.name)
        spoken = structure(normalize.normalize_text(ref.read_text(encoding="utf-8"), settings),
                           meta, settings)
        expected_text = ref.with_name(f"{stem}.expected.txt").read_text(encoding="utf-8")
        expected = structure(Note(text=expected_text), meta, settings)
        assert spoken.document_type == expected.document_type, stem
        assert [s.key for s in spoken.sections] == [s.key for s in expected.sections], stem
        assert "header_mismatch" not in spoken.flags, stem


def test_sample_instructions_match_the_samples_task_lists(settings, samples_dir) -> None:
    """The instruction kinds lifted from each spoken sample equal its *.tasks.json."""
    from pipeline.ingest.sidecar import parse_sidecar
    from pipeline.language import normalize

    task_files = sorted((samples_dir / "synthetic_medical").glob("*.tasks.json"))
    if not task_files:
        pytest.skip("no sample task lists")
    for tasks in task_files:
        stem = tasks.name.removesuffix(".tasks.json")
        ref = tasks.with_name(f"{stem}.ref.txt")
        side = tasks.with_name(f"{stem}.json")
        meta = parse_sidecar(side.read_text(encoding="utf-8"), name=side.name)
        doc = structure(normalize.normalize_text(ref.read_text(encoding="utf-8"), settings),
                        meta, settings)
        wanted = json.loads(tasks.read_text(encoding="utf-8"))
        assert [i.kind for i in doc.instructions] == [t["kind"] for t in wanted], stem
