"""The template library: built-in field maps, practice templates dropped into a folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import docx
import pytest

from pipeline.core.errors import TemplateFieldError, TemplateNotFoundError
from pipeline.core.records import AudioInfo, Dictation, DictationMeta, Note
from pipeline.documents.sections import structure
from pipeline.documents.templates import DOCUMENT_TYPES, get_template, list_templates, load_spec

LOINC = {
    "operative_report": "11504-8",
    "consult_letter": "11488-4",
    "progress_note": "11506-3",
    "discharge_summary": "18842-5",
    "radiology_report": "18748-4",
    "referral_letter": "57133-1",
}


def make_dictation() -> Dictation:
    return Dictation(
        id="dict-t",
        audio=AudioInfo(path=Path("d.wav"), sha256="0" * 64, size_bytes=1, format="wav",
                        codec="pcm_s16le", sample_rate=16000, channels=1, duration_s=5.0),
        meta=DictationMeta(physician_id="dr-smith"),
    )


def test_builtin_templates(settings) -> None:
    templates = list_templates(settings)
    assert set(DOCUMENT_TYPES) <= set(templates)
    for key in DOCUMENT_TYPES:
        spec = templates[key]
        assert spec.loinc == LOINC[key]
        assert spec.docx_path.is_file() and spec.source == "builtin"
        assert any(f.required for f in spec.sections)
        for f in spec.sections:
            assert f.headings and all(h == h.lower() for h in f.headings)
            for alt in f.alternatives:
                assert alt == "body" or spec.field(alt) is not None, (key, alt)
            if f.overflow:
                assert spec.field(f.overflow) is not None


def test_builtin_docx_carry_styles_and_tags(settings) -> None:
    """Each .docx is a Word document with our named styles, a letterhead and a footer."""
    for key in DOCUMENT_TYPES:
        document = docx.Document(str(get_template(key, settings).docx_path))
        names = {s.name for s in document.styles}
        assert {"Title", "Heading 2", "Body Text", "Field Label", "Missing"} <= names
        section = document.sections[0]
        assert "{{ practice_name }}" in section.header.paragraphs[0].text
        assert "{{ status_text }}" in section.footer.paragraphs[0].text
        assert document.tables, key


def _user_template(folder: Path, key: str, settings, body_tag: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(get_template("progress_note", settings).docx_path, folder / f"{key}.docx")
    if body_tag:
        document = docx.Document(str(folder / f"{key}.docx"))
        document.add_paragraph(body_tag)
        document.save(str(folder / f"{key}.docx"))
    (folder / f"{key}.toml").write_text(
        f'key = "{key}"\ntitle = "Sleep Study Report"\nloinc = "28633-6"\n'
        'detect_phrases = ["sleep study"]\n\n'
        '[[sections]]\nkey = "apnea_hypopnea_index"\nlabel = "Apnea-hypopnea index"\n'
        'headings = ["apnea hypopnea index", "ahi"]\nrequired = true\n\n'
        '[[sections]]\nkey = "impression"\nlabel = "Impression"\nheadings = ["impression"]\n'
        'required = true\n',
        encoding="utf-8",
    )


def test_practice_template_dropped_into_folder_is_used(settings, tmp_path) -> None:
    """A practice adds <key>.docx + <key>.toml to user_templates_dir; no restart needed."""
    from pipeline.documents.render import render_outputs

    assert "sleep_study" not in list_templates(settings)
    _user_template(settings.user_templates_dir, "sleep_study", settings)
    spec = get_template("sleep_study", settings)
    assert spec.source == "user" and spec.loinc == "28633-6"
    text = "AHI: 23 events per hour.\nIMPRESSION: Moderate obstructive sleep apnea."
    doc = structure(Note(text=text), DictationMeta(document_type="sleep_study"), settings)
    assert [(s.key, s.text) for s in doc.sections] == [
        ("apnea_hypopnea_index", "23 events per hour."),
        ("impression", "Moderate obstructive sleep apnea."),
    ]
    out = render_outputs(doc, make_dictation(), "d1", tmp_path / "d1", settings)
    rendered = docx.Document(str(out["docx"]))
    text_out = "\n".join(p.text for p in rendered.paragraphs)
    assert "Moderate obstructive sleep apnea." in text_out
    assert "Apnea-hypopnea index" in text_out


def test_user_template_overrides_builtin(settings) -> None:
    _user_template(settings.user_templates_dir, "radiology_report", settings)
    assert get_template("radiology_report", settings).source == "user"


def test_template_asking_for_unknown_field_is_an_error(settings, tmp_path) -> None:
    """StrictUndefined: a tag the document does not provide raises TemplateFieldError."""
    from pipeline.documents.render import render_outputs

    _user_template(settings.user_templates_dir, "sleep_study", settings,
                   body_tag="Insurance: {{ insurance_number }}")
    doc = structure(Note(text="IMPRESSION: Normal."), DictationMeta(document_type="sleep_study"),
                    settings)
    with pytest.raises(TemplateFieldError, match="insurance_number"):
        render_outputs(doc, make_dictation(), "d2", tmp_path / "d2", settings)
    assert not (tmp_path / "d2").exists()


def test_broken_field_maps(settings, tmp_path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    shutil.copy(get_template("progress_note", settings).docx_path, folder / "x.docx")
    (folder / "x.toml").write_text("title = 'X'\n", encoding="utf-8")
    with pytest.raises(TemplateFieldError, match="loinc"):
        load_spec(folder / "x.toml")
    (folder / "x.toml").write_text("title = [\n", encoding="utf-8")
    with pytest.raises(TemplateFieldError, match="not valid TOML"):
        load_spec(folder / "x.toml")
    (folder / "x.toml").write_text("title = 'X'\nloinc = '1-1'\n", encoding="utf-8")
    with pytest.raises(TemplateFieldError, match="no \\[\\[sections\\]\\]"):
        load_spec(folder / "x.toml")
    (folder / "y.toml").write_text("title = 'Y'\nloinc = '1-1'\n", encoding="utf-8")
    with pytest.raises(TemplateNotFoundError, match=r"y\.docx"):
        load_spec(folder / "y.toml")


def test_unknown_template_key(settings) -> None:
    with pytest.raises(TemplateNotFoundError, match="operative_report"):
        get_template("nonexistent", settings)
