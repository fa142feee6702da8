"""Encryption at rest, end to end (real inbox, real tiny.en, real SQLCipher, real files).

A dictation with a sidecar whose patient name and MRN are distinctive goes through the inbox
(claim, register, seal), the pipeline (probe, transcribe, normalize, render, PDF through the
real LibreOffice, queue), the archive, signing (final outputs rendered again, PDF included)
and a delivery by e-mail to a real SMTP server on loopback (aiosmtpd), as the service runs
them. Afterwards no file under the data directory holds the name or the MRN in clear text:
every byte of every file is searched (drafts, LibreOffice's profiles and conversion folders,
the SQLite database and its WAL included), and every file of the drafts is encrypted (a
.docx or PDF is compressed, so the byte search alone would not see the name in one).
"""

from __future__ import annotations

import email
import json
import shutil
import socket
import subprocess
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from pipeline.core import crypto, files, store
from pipeline.core.db.core import DictationRow
from pipeline.core.settings import Settings
from pipeline.ingest import audio, inbox

NAME = "Quillon Vantablack"
MRN = "MRN-Z9Q7X4"
NEEDS_SOFFICE = pytest.mark.skipif(shutil.which("soffice") is None,
                                   reason="LibreOffice (soffice) is not installed")
PASSWORD = "violet-harbor-quantum-97"
TEXT = (
    "Subjective: the patient reports chest pain for two days.\n\n"
    "Assessment: atypical chest pain.\n\n"
    "Plan: follow up in two weeks.\n"
)


@pytest.fixture
def keyed(settings: Settings, tmp_path: Path) -> Settings:
    settings.key_file = tmp_path / "config" / "data.key"
    return settings


def _hits(root: Path, needles: list[bytes]) -> dict[str, list[str]]:
    """Files under ``root`` (relative names) holding any of ``needles``, by top folder."""
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        variants = [n for n in needles] + [n.decode().encode("utf-16-le") for n in needles]
        if any(v in data for v in variants):
            rel = path.relative_to(root)
            found.setdefault(rel.parts[0], []).append(str(rel))
    return found


def _drop(settings: Settings, speech: Path, name: str) -> Path:
    folder = settings.inbox_dir / "dr-smith"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.wav"
    shutil.copy(speech, target)
    (folder / f"{name}.json").write_text(json.dumps(
        {"patient_name": NAME, "mrn": MRN, "date_of_birth": "1961-04-02",
         "document_type": "progress_note"}), encoding="utf-8")
    return target


class _Mailbox:
    """aiosmtpd handler keeping every received message."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.messages.append(envelope.content)
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sign_and_deliver(settings: Settings, draft_id: str) -> bytes:
    """Review, sign (as the draft's physician) and e-mail the draft to a real SMTP server on
    loopback; return the attachment the server received."""
    from aiosmtpd.controller import Controller

    from pipeline.core.db.core import DraftRow
    from pipeline.review import signing
    from pipeline.review import versions as wf
    from pipeline.review.users import create_user
    from pipeline.secretary import route

    with store.open_store(settings).session() as s:
        sec = create_user(s, "sec", PASSWORD, "secretary", ["dr-smith"])
        smith = create_user(s, "smith", PASSWORD, "physician", ["dr-smith"])
        draft = s.get(DraftRow, draft_id)
        assert draft is not None
        wf.claim(s, sec, draft)
        wf.save_text(s, sec, draft, TEXT, None)
        wf.send_for_signature(s, sec, draft)
    with store.open_store(settings).session() as s:
        draft = s.get(DraftRow, draft_id)
        result = signing.sign_draft(s, settings, smith, draft, PASSWORD)
        assert result.problems == [], result.problems
        assert "pdf" in result.outputs  # the signed PDF, converted through LibreOffice
        rec = route.add_recipient(s, "Dr. Referrer", "referring_physician", "email",
                                  "referrer@elsewhere.example")
        delivery = route.route_draft(s, draft_id, recipient_id=rec.id)
        delivery_id = delivery.id
    mailbox = _Mailbox()
    port = _free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        opts = route.RouteOptions(smtp_host="127.0.0.1", smtp_port=port, smtp_security="none",
                                  smtp_from="letters@clinic.example", smtp_timeout_s=10)
        report = route.deliver_due(settings, opts)
    finally:
        controller.stop()
    assert report.delivered == [delivery_id], report
    message = email.message_from_bytes(mailbox.messages[0], _class=EmailMessage)
    parts = [p for p in message.iter_attachments()]
    assert len(parts) == 1
    payload = parts[0].get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


@pytest.mark.slow
@pytest.mark.timeout(900)
@NEEDS_SOFFICE
def test_no_patient_name_or_mrn_in_clear_under_the_data_directory(
        keyed: Settings, speech: Path) -> None:
    from pipeline.service.process import process_file

    keyed.pdf = "auto"
    inbox.ensure_layout(keyed)
    dropped = _drop(keyed, speech, "dictation")
    result = inbox.InboxScanner(keyed).take(dropped)
    assert result.outcome == "received", result
    assert not dropped.exists() and not dropped.with_suffix(".json").exists()
    with store.open_store(keyed).session() as s:
        row = s.scalars(select(DictationRow)).one()
        claimed = Path(row.audio_path or "")
        meta = inbox.load_meta(claimed, row.physician_id, keyed)
        # the idempotency key is the plain audio's SHA-256
        assert row.sha256 == audio.sha256_file(speech)
    assert meta.patient_name == NAME and meta.mrn == MRN
    assert files.is_encrypted(claimed) and files.is_encrypted(claimed.with_suffix(".json"))

    processed = process_file(claimed, keyed, meta)  # probe + transcribe through the layer
    assert processed.transcript.segments  # the real model heard the decrypted audio
    outputs = processed.draft.outputs
    assert set(outputs) == {"docx", "txt", "fhir", "hl7", "pdf"}
    assert all(files.is_encrypted(Path(p)) for p in outputs.values())
    assert NAME in files.read_bytes(Path(outputs["txt"]), keyed).decode()
    assert files.read_bytes(Path(outputs["pdf"]), keyed)[:5] == b"%PDF-"
    archived = inbox.archive(keyed, result.dictation_id or "")
    assert archived is not None and files.is_encrypted(archived)
    assert files.is_encrypted(archived.with_suffix(".json"))
    assert files.read_bytes(archived, keyed) == speech.read_bytes()

    attachment = _sign_and_deliver(keyed, processed.draft.id)
    # the recipient gets the plain signed PDF (decrypted in memory for the e-mail)
    assert attachment[:5] == b"%PDF-"
    text = subprocess.run(["pdftotext", "-", "-"], input=attachment, capture_output=True,
                          check=True).stdout.decode()
    assert NAME in text and MRN in text

    db = keyed.data_path / "dictation.db"
    assert store.is_encrypted_database(db)
    assert Path(f"{db}-wal").exists()  # the WAL is searched below too
    drafts = [p for p in keyed.drafts_dir.rglob("*") if p.is_file()]
    signed = [p for p in drafts if p.parent.name == "signed"]
    assert {p.name for p in signed} >= {"document.docx", "document.pdf", "document.txt"}
    assert [p for p in drafts if not files.is_encrypted(p)] == []
    assert list((keyed.cache_dir / "tmp").iterdir()) == []  # no conversion folder left
    assert _hits(keyed.data_path, [NAME.encode(), MRN.encode()]) == {}


@NEEDS_SOFFICE
def test_pdf_conversion_leaves_no_clear_file(keyed: Settings) -> None:
    """A real conversion: the PDF comes back as bytes and the private folder (the clear
    .docx, the PDF, LibreOffice's temporary files) is gone."""
    from pipeline.documents import pdf

    docx = _docx_naming_the_patient(keyed)
    work = keyed.cache_dir / "tmp"
    made = pdf.convert_bytes(docx, profile_root=keyed.cache_dir / "soffice", work_root=work,
                             timeout=keyed.pdf_timeout_seconds)
    assert made[:5] == b"%PDF-"
    assert list(work.iterdir()) == []
    assert oct(work.stat().st_mode & 0o777) == "0o700"
    assert _hits(keyed.data_path, [NAME.encode(), MRN.encode()]) == {}


@pytest.mark.parametrize("body", [
    # LibreOffice fails after writing its temporary files and a partial PDF
    'for a in "$@"; do last="$a"; done; echo "{name}" > "$TMPDIR/lu1.tmp"; '
    'cp "$last" "$(dirname "$last")/out/partial.pdf"; exit 81',
    # LibreOffice hangs (killed at the timeout) after writing a temporary file
    'echo "{name}" > "$TMPDIR/lu2.tmp"; sleep 30',
])
def test_failing_conversion_leaves_no_clear_file(
        keyed: Settings, fake_soffice: Callable[[Path, str], Path],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, body: str) -> None:
    """A failing or hanging LibreOffice (the ``fake_soffice`` fixture): the conversion
    raises, and its private folder with the clear .docx and the temporary files is removed."""
    from pipeline.documents import pdf

    bin_dir = fake_soffice(tmp_path / "bin", body.format(name=NAME))
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    work = keyed.cache_dir / "tmp"
    with pytest.raises(pdf.PdfConversionError):
        pdf.convert_bytes(_docx_naming_the_patient(keyed), profile_root=tmp_path / "p",
                          work_root=work, timeout=2)
    assert list(work.iterdir()) == []
    assert _hits(keyed.data_path, [NAME.encode(), MRN.encode()]) == {}


def test_a_conversion_folder_left_by_a_killed_worker_is_swept(
        keyed: Settings, fake_soffice: Callable[[Path, str], Path],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A worker killed mid-conversion cannot run its ``finally``: the next conversion removes
    folders older than any conversion lasts (and leaves a fresh one alone)."""
    import os

    from pipeline.documents import pdf

    work = keyed.cache_dir / "tmp"
    stale, fresh = work / f"{pdf.WORK_PREFIX}stale", work / f"{pdf.WORK_PREFIX}fresh"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "document.docx").write_bytes(NAME.encode())
    os.utime(stale, (1, 1))
    monkeypatch.setenv("PATH", f"{fake_soffice(tmp_path / 'bin', 'exit 1')}:/usr/bin:/bin")
    with pytest.raises(pdf.PdfConversionError):
        pdf.convert_bytes(b"x", profile_root=tmp_path / "p", work_root=work, timeout=2)
    assert sorted(p.name for p in work.iterdir()) == [fresh.name]


def test_outputs_are_sealed_inside_the_data_directory_and_plain_outside(
        keyed: Settings, tmp_path: Path) -> None:
    """``render_outputs`` into ``drafts/``: every file encrypted, readable through the layer;
    into a folder outside the data directory (``dictation render --out DIR``, an export the
    user asked for): plain."""
    inside = _render(keyed, keyed.drafts_dir / "d1")
    outside = _render(keyed, tmp_path / "export" / "d1")
    for kind in ("docx", "txt", "fhir", "hl7"):
        assert files.is_encrypted(inside[kind]), kind
        assert not files.is_encrypted(outside[kind]), kind
    assert NAME in files.read_bytes(inside["txt"], keyed).decode()
    assert NAME in outside["txt"].read_text(encoding="utf-8")
    assert _hits(keyed.data_path, [NAME.encode(), MRN.encode()]) == {}
    keyed.encrypt_files = False
    plain = _render(keyed, keyed.drafts_dir / "d2")
    assert not files.is_encrypted(plain["txt"])


def test_workbench_download_serves_the_plain_output_from_memory(keyed: Settings) -> None:
    """The editor's download of a sealed output is the plain file (an attachment), and no
    clear copy appears under the data directory."""
    import re

    from fastapi.testclient import TestClient

    from pipeline.core.db.core import DraftRow
    from pipeline.review.users import create_user
    from pipeline.web.app import create_app
    from pipeline.web.seed import add_draft

    with store.open_store(keyed).session() as s:
        create_user(s, "sec", PASSWORD, "secretary", ["dr-smith"])
        draft_id = add_draft(s, text="Plan: rest.\n", segments=[], physician_id="dr-smith",
                             patient_name=NAME, mrn=MRN)
        outputs = _render(keyed, keyed.drafts_dir / draft_id)
        row = s.get(DraftRow, draft_id)
        assert row is not None
        row.outputs = {k: str(v) for k, v in outputs.items()}
    client = TestClient(create_app(keyed), client=("127.0.0.1", 50000))
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert token
    client.post("/login", data={"csrf_token": token.group(1), "username": "sec",
                                "password": PASSWORD}, follow_redirects=False)
    for kind in ("txt", "docx", "hl7", "fhir"):
        got = client.get(f"/drafts/{draft_id}/outputs/{kind}")
        assert got.status_code == 200, kind
        assert got.content == files.read_bytes(outputs[kind], keyed), kind
        assert got.headers["content-disposition"].startswith("attachment; filename=")
    assert NAME in client.get(f"/drafts/{draft_id}/outputs/txt").text
    assert _hits(keyed.data_path, [NAME.encode(), MRN.encode()]) == {}


def _render(settings: Settings, out_dir: Path) -> dict[str, Path]:
    from pipeline.core.records import AudioInfo, Dictation, DictationMeta, Note
    from pipeline.documents import render, sections

    meta = DictationMeta(patient_name=NAME, mrn=MRN, document_type="progress_note")
    document = sections.structure(Note(text=TEXT), meta, settings)
    dictation = Dictation(id="x", meta=meta, audio=AudioInfo(
        path=Path("x.wav"), sha256="", size_bytes=0, format="", codec="", sample_rate=0,
        channels=0, duration_s=0.0))
    return render.render_outputs(document, dictation, out_dir.name, out_dir, settings,
                                 pdf="never")


def _docx_naming_the_patient(settings: Settings) -> bytes:
    out = _render(settings, settings.drafts_dir / "for-pdf")
    return files.read_bytes(out["docx"], settings)


def test_encryption_off_stores_plain_files(settings: Settings, speech: Path) -> None:
    """With both settings off the files and database stay plain (and the search finds them)."""
    settings.encrypt_files = False
    settings.encrypt_database = False
    settings.key_file = settings.data_path.parent / "config" / "data.key"
    inbox.ensure_layout(settings)
    result = inbox.InboxScanner(settings).take(_drop(settings, speech, "plain"))
    assert result.outcome == "received"
    folder = settings.processing_dir / (result.dictation_id or "")
    stored = folder / f"{result.dictation_id}.wav"  # opaque name, plain content
    assert not files.is_encrypted(stored)
    assert stored.read_bytes() == speech.read_bytes()
    hits = _hits(settings.data_path, [NAME.encode()])
    assert "processing" in hits and any(top.startswith("dictation.db") for top in hits)


def test_a_claim_interrupted_before_sealing_is_sealed_on_resume(
        keyed: Settings, speech: Path) -> None:
    """A crash between the claim (a rename) and the seal leaves a plain file in processing/;
    registering it again seals it, with the same plain SHA-256."""
    inbox.ensure_layout(keyed)
    did = inbox.claim(_drop(keyed, speech, "crash"), keyed, "dr-smith")
    assert did is not None
    claimed = keyed.processing_dir / did / f"{did}.wav"
    assert not files.is_encrypted(claimed)  # claimed, not yet sealed
    result = inbox.register(keyed, did)
    assert result.outcome == "received"
    assert files.is_encrypted(claimed)
    with store.open_store(keyed).session() as s:
        assert s.get(DictationRow, did).sha256 == audio.sha256_file(speech)  # type: ignore[union-attr]
    assert inbox.register(keyed, did).outcome == "received"  # again: hashes the plain bytes


def test_quarantined_audio_is_encrypted_and_its_reason_holds_no_patient_data(
        keyed: Settings, tmp_path: Path) -> None:
    inbox.ensure_layout(keyed)
    folder = keyed.inbox_dir / "dr-smith"
    bad = folder / "note.wav"
    bad.write_bytes(b"not audio at all, " + NAME.encode())
    (folder / "note.json").write_text(json.dumps({"patient_name": NAME, "mrn": MRN,
                                                  "bogus_field": 1}), encoding="utf-8")
    result = inbox.InboxScanner(keyed).take(bad)
    assert result.outcome == "quarantined"  # malformed sidecar
    q = keyed.quarantine_dir
    did = result.dictation_id
    assert files.is_encrypted(q / f"{did}.wav") and files.is_encrypted(q / f"{did}.json")
    reason = (q / f"{did}.wav.reason.txt").read_text()
    assert "bogus_field" in reason and NAME not in reason and MRN not in reason
    assert _hits(keyed.data_path, [NAME.encode(), MRN.encode()]) == {}


def test_stored_audio_decodes_through_the_layer_for_every_format(
        keyed: Settings, samples_dir: Path, tmp_path: Path) -> None:
    """probe and iter_audio read an encrypted file as they read the plain one (in memory:
    MP4/M4A need seeking, which a forward-only decrypting stream cannot give)."""
    src = sorted((samples_dir / "synthetic_medical").glob("*.ogg"))[0]
    plain = tmp_path / "plain.ogg"
    shutil.copy(src, plain)
    sealed = tmp_path / "sealed.ogg"
    shutil.copy(src, sealed)
    files.seal(sealed, keyed)
    assert crypto.is_encrypted(sealed)
    a, b = audio.probe(plain, keyed), audio.probe(sealed, keyed)
    assert (a.sha256, a.duration_s, a.format) == (b.sha256, b.duration_s, b.format)
    ref = files.AudioRef(sealed, keyed)
    got = sum(c.size for c in audio.iter_audio(ref, 30.0))
    assert got == sum(c.size for c in audio.iter_audio(plain, 30.0)) > 0


def test_m4a_decodes_from_the_in_memory_copy(keyed: Settings, tmp_path: Path) -> None:
    """Regression guard for the choice of decrypting into memory: an M4A (index at the end)
    fails from a forward-only stream but decodes from the layer's seekable copy."""
    m4a = tmp_path / "a.m4a"
    subprocess.run(["espeak-ng", "-w", str(tmp_path / "a.wav"), "Plan follows."], check=True)
    import av

    with av.open(str(tmp_path / "a.wav")) as src, av.open(str(m4a), "w", format="ipod") as dst:
        stream = dst.add_stream("aac", rate=22050)
        frames = list(src.decode(audio=0))
        for _ in range(40):  # ~40 s: the index (moov) lies beyond what FFmpeg buffers
            for frame in frames:
                frame.pts = None
                for packet in stream.encode(frame):
                    dst.mux(packet)
        for packet in stream.encode(None):
            dst.mux(packet)
    files.seal(m4a, keyed)
    assert files.is_encrypted(m4a)
    assert audio.probe(m4a, keyed).duration_s > 0.3
    with crypto.open_decrypted(m4a, crypto.keyring(keyed)) as fh, \
            pytest.raises(av.error.FFmpegError), av.open(_ForwardOnly(fh)) as container:
        for _frame in container.decode(audio=0):
            pass


class _ForwardOnly:
    """A file object that cannot seek (what a streaming decryptor offers)."""

    def __init__(self, fh: object) -> None:
        self._fh = fh

    def read(self, n: int = -1) -> bytes:
        return self._fh.read(n)  # type: ignore[attr-defined,no-any-return]


def test_workbench_plays_encrypted_audio_with_ranges(keyed: Settings, speech: Path) -> None:
    """The editor's audio endpoint serves the plain audio of an encrypted stored file, whole
    and by HTTP ranges (the player seeks), from memory."""
    import re

    from fastapi.testclient import TestClient

    from pipeline.review.users import create_user
    from pipeline.web.app import create_app
    from pipeline.web.seed import add_draft

    password = "violet-harbor-quantum-97"
    stored = keyed.archive_dir / "a1" / "dictation.wav"
    stored.parent.mkdir(parents=True)
    shutil.copy(speech, stored)
    files.seal(stored, keyed)
    assert files.is_encrypted(stored)
    with store.open_store(keyed).session() as s:
        create_user(s, "sec", password, "secretary", ["dr-smith"])
        draft_id = add_draft(s, text="Plan: rest.\n", segments=[], physician_id="dr-smith",
                             patient_name=NAME, mrn=MRN, audio_path=stored)
    client = TestClient(create_app(keyed), client=("127.0.0.1", 50000))
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert token
    client.post("/login", data={"csrf_token": token.group(1), "username": "sec",
                                "password": password}, follow_redirects=False)
    plain = speech.read_bytes()
    full = client.get(f"/drafts/{draft_id}/audio")
    assert full.status_code == 200 and full.content == plain
    part = client.get(f"/drafts/{draft_id}/audio", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == plain[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(plain)}"
    tail = client.get(f"/drafts/{draft_id}/audio", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == plain[-10:]
    beyond = client.get(f"/drafts/{draft_id}/audio",
                        headers={"Range": f"bytes={len(plain) + 5}-"})
    assert beyond.status_code == 416
