"""Patient columns sealed on a real PostgreSQL (throwaway server on loopback; issue #17).

One database walks the whole life: rows written by a version without column encryption
(schema at 0008), the upgrade (0009 seals them), a real dictation taken from the inbox and
processed, a draft edited and signed, rows written with ``encrypt_columns`` off and sealed
by ``dictation keys encrypt-columns``, and a key rotation. At each step a raw dump of every
table through psycopg2 (not the ORM) must hold no patient name, MRN or transcript word in
clear, while the app reads the values back and the MRN lookup, the worklist's name search
and the audit search still find them. Skipped when the PostgreSQL server binaries are not
installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from pgserver import postgres_server
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from pipeline.core import audit, crypto, store
from pipeline.core.db import encrypted
from pipeline.core.db.core import AuditEvent, DictationRow, DraftRow
from pipeline.core.db.review import DraftVersion
from pipeline.core.settings import Settings
from pipeline.ingest import inbox
from pipeline.review import users, versions
from pipeline.review.users import UserInfo
from pipeline.web.routes.admin import search_audit
from pipeline.web.routes.worklist import worklist_rows

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

NAME, MRN = "John Smith", "MRN123456"
LEGACY_NAME, LEGACY_MRN = "Ada Lovelace", "LEG424242"
LATE_NAME, LATE_MRN = "Grace Hopper", "OFF777777"
#: never in clear in the database (the speech fixture says "chest pain"); long enough, or
#: holding a space or "_", never to turn up by chance in base64 or hex
SECRETS = (NAME, MRN, "Smith_John", LEGACY_NAME, LEGACY_MRN, LATE_NAME, LATE_MRN,
           "chest pain")
ADMIN = UserInfo(0, "auditor", "admin")


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with postgres_server(["enc"]) as address:
        yield f"postgresql+psycopg2://postgres@{address}/enc"


def _dump(url: str) -> str:
    """Every row of every table as text, read with psycopg2 (what the server stores)."""
    import psycopg2

    conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            tables = [r[0] for r in cur.fetchall()]
            parts = []
            for table in tables:
                cur.execute(f'SELECT t::text FROM "{table}" t')
                parts.extend(r[0] for r in cur.fetchall())
    finally:
        conn.close()
    return "\n".join(parts)


def _clear(url: str, *secrets: str) -> list[str]:
    dump = _dump(url)
    return [s for s in secrets if s in dump]


def _plain_draft(session: Session, name: str, mrn: str) -> str:
    """A dictation and its queued draft as a version without column encryption wrote them."""
    did = uuid.uuid4().hex
    session.add(DictationRow(id=did, sha256=did * 2, physician_id="dr-smith",
                             original_name=f"{name.replace(' ', '_')}_{mrn}.wav",
                             meta={"patient_name": name, "mrn": mrn}))
    draft_id = uuid.uuid4().hex
    session.add(DraftRow(id=draft_id, dictation_id=did, physician_id="dr-smith",
                         document_type="progress_note", audio_sha256=did * 2,
                         text=f"{name} was seen today.\n", patient_name=name, mrn=mrn,
                         document={"header": {"patient_name": {"value": name}}}))
    session.flush()
    audit.record(session, actor="system:test", action="view", object_type="draft",
                 object_id=draft_id, patient_ref=mrn)
    return draft_id


def _find(session: Session, q: str) -> set[str]:
    rows, total = worklist_rows(session, ADMIN, status="all", q=q, per_page=100)
    assert total == len(rows)
    return {r["id"] for r in rows}


def _process(settings: Settings, speech: Path) -> tuple[str, str]:
    """A real dictation with a sidecar through the inbox and the pipeline stages."""
    from pipeline.service.process import (
        enqueue_stage,
        load_dictation,
        normalize_stage,
        render_stage,
        structure_stage,
        transcribe_stage,
    )

    inbox.ensure_layout(settings)
    dropped = settings.inbox_dir / "dr-smith" / "Smith_John_MRN123456.wav"
    shutil.copy(speech, dropped)
    dropped.with_suffix(".json").write_text(json.dumps({"patient_name": NAME, "mrn": MRN}),
                                            encoding="utf-8")
    result = inbox.InboxScanner(settings).take(dropped)
    assert result.outcome == "received" and result.dictation_id
    did = result.dictation_id
    with store.open_store(settings).session() as s:
        row = s.get(DictationRow, did)
        assert row is not None
        path = Path(str(row.audio_path))
    d = load_dictation(path, settings, inbox.load_meta(path, "dr-smith", settings),
                       dictation_id=did)
    t = transcribe_stage(d, settings)
    n = normalize_stage(t, d, settings)
    doc = structure_stage(n, d, settings)
    draft = enqueue_stage(d, t, n, doc, render_stage(doc, d, t, n, settings), settings)
    inbox.archive(settings, did)
    return did, draft.id


def test_patient_columns_are_sealed_on_postgres(pg_url: str, settings: Settings,
                                                 speech: Path, tmp_path: Path) -> None:
    settings = settings.model_copy(update={
        "database_url": pg_url,
        "key_file": tmp_path / "keys" / "data.key",  # rotated below: not the session's key
    })
    plain_settings = settings.model_copy(update={"encrypt_columns": False})

    # 1. a database written before column encryption (schema at 0008, no cipher)
    command.upgrade(store.alembic_config(pg_url), "0008_model_versions")
    old = store.create_db_engine(pg_url, plain_settings)
    with Session(old) as s:
        store.ensure_physicians(s, settings.physicians)
        legacy_id = _plain_draft(s, LEGACY_NAME, LEGACY_MRN)
        s.commit()
    old.dispose()
    assert _clear(pg_url, LEGACY_NAME, LEGACY_MRN) == [LEGACY_NAME, LEGACY_MRN]

    # 2. the upgrade (0009) seals what is stored
    st = store.open_store(settings)
    assert _clear(pg_url, *SECRETS) == [] and encrypted.PREFIX in _dump(pg_url)
    with st.session() as s:
        legacy = s.get(DraftRow, legacy_id)
        assert legacy is not None and (legacy.patient_name, legacy.mrn) == (LEGACY_NAME,
                                                                            LEGACY_MRN)
        assert _find(s, LEGACY_MRN) == {legacy_id}
        assert _find(s, "lovelace") == {legacy_id}

    # 3. a real dictation (sidecar: name and MRN; file named after the patient), edited
    did, draft_id = _process(settings, speech)
    with st.session() as s:
        secretary = users.create_user(s, "sec1", "Vx9!kq2#Lm7$Rt4p-Qw8", "secretary",
                                      ["dr-smith"])
        draft = s.get(DraftRow, draft_id)
        assert draft is not None and "chest pain" in draft.text.lower()
        version = versions.save_text(s, secretary, draft,
                                     draft.text + f"\n{NAME} agrees with the plan.\n", None)
        assert version == 2
    assert _clear(pg_url, *SECRETS) == []
    with st.session() as s:  # the app reads everything back
        draft = s.get(DraftRow, draft_id)
        row = s.get(DictationRow, did)
        assert draft is not None and row is not None
        assert (draft.patient_name, draft.mrn) == (NAME, MRN)
        assert f"{NAME} agrees" in draft.text and "chest pain" in draft.raw_text.lower()
        assert draft.document["header"]["patient_name"]["value"] == NAME
        assert row.original_name == "Smith_John_MRN123456.wav" and row.meta["mrn"] == MRN
        texts = s.scalars(select(DraftVersion.text).where(DraftVersion.draft_id == draft_id))
        assert any(NAME in t for t in texts)
        assert _find(s, MRN) == {draft_id}  # equality on the sealed MRN
        assert _find(s, "smith") == {draft_id}  # the name search, in Python
        assert _find(s, "JOHN SM") == {draft_id}
        assert _find(s, "nobody") == set()
        events, n = search_audit(s, patient=MRN)
        assert n >= 2 and {e.patient_ref for e in events} == {MRN}
        draft.status = "signed"  # the signed text is immutable, sealed or not
    with pytest.raises(DBAPIError, match="signed draft text is immutable"), \
            st.session() as s:
        s.execute(text("UPDATE drafts SET text = 'changed' WHERE id = :i"), {"i": draft_id})

    # 4. rows written with encrypt_columns off stay plain until the command seals them
    off = store.create_db_engine(pg_url, plain_settings)
    with Session(off) as s:
        late_id = _plain_draft(s, LATE_NAME, LATE_MRN)
        s.commit()
    off.dispose()
    assert _clear(pg_url, LATE_NAME, LATE_MRN) == [LATE_NAME, LATE_MRN]
    with st.session() as s:
        late = s.get(DraftRow, late_id)
        assert late is not None and late.patient_name == LATE_NAME  # plain: read as is
        assert _find(s, "hopper") == {late_id}
    counts = store.encrypt_columns(settings)
    assert counts.plain >= 5 and counts.sealed == counts.plain
    assert _clear(pg_url, *SECRETS) == []
    with st.session() as s:
        assert _find(s, LATE_MRN) == {late_id}
        assert s.get(DraftRow, late_id).mrn == LATE_MRN  # type: ignore[union-attr]
    before = store.column_status(settings)
    assert before.plain == 0 and list(before.by_key) == [crypto.keyring(settings)
                                                         .current_id.hex()]

    # 5. a key rotation seals every value again, the signed draft's text included
    old_id = crypto.keyring(settings).current_id.hex()
    result = crypto.rotate(settings, [settings.data_path])
    assert result.complete and result.new_key and result.retired == [old_id]
    after = store.column_status(settings)
    assert after.plain == 0 and after.sealed == before.sealed
    assert list(after.by_key) == [result.current_id] and result.current_id != old_id
    assert _clear(pg_url, *SECRETS) == []
    with st.session() as s:
        draft = s.get(DraftRow, draft_id)
        assert draft is not None and draft.status == "signed"
        assert f"{NAME} agrees" in draft.text and draft.mrn == MRN
        assert _find(s, MRN) == {draft_id} and _find(s, "smith") == {draft_id}
        assert _find(s, LEGACY_MRN) == {legacy_id}
        assert search_audit(s, patient=MRN)[1] >= 2
        assert s.scalar(select(AuditEvent.patient_ref)
                        .where(AuditEvent.patient_ref == LATE_MRN)) == LATE_MRN
        assert audit.verify(s, settings).ok  # the chain hashes the plain values

    # 6. what an administrator sees: figures and key ids, no values
    env = {**os.environ, "DICTATION_DATA_DIR": str(settings.data_path),
           "DICTATION_DATABASE_URL": pg_url, "DICTATION_KEY_FILE": str(settings.key_file)}
    shown = subprocess.run([sys.executable, "-m", "pipeline.cli", "keys", "status"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"{after.sealed} sealed values, 0 plain" in shown.stdout
    assert f"key {result.current_id}: {after.sealed} (current)" in shown.stdout
    assert not [x for x in SECRETS if x in shown.stdout + shown.stderr]


def test_sealed_values_are_authenticated() -> None:
    """A sealed value changed in the database fails loudly (never returned as text), and a
    value sealed deterministically is the same each time (what the MRN lookup relies on)."""
    ring = crypto.KeyRing(crypto.generate_key(), source="memory")
    cipher = encrypted.ColumnCipher(lambda: ring)
    sealed = cipher.seal(NAME)
    assert cipher.seal(NAME) != sealed and cipher.open(sealed) == NAME
    assert cipher.seal(MRN, deterministic=True) == cipher.seal(MRN, deterministic=True)
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(crypto.DecryptionError, match="failed authentication"):
        cipher.open(tampered)
    other = encrypted.ColumnCipher(lambda: crypto.KeyRing(crypto.generate_key(),
                                                          source="memory"))
    with pytest.raises(crypto.DecryptionError, match="not in the key ring"):
        other.open(sealed)
