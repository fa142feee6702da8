"""Adapted model versions (``pipeline.adaptation.versions``): candidates recorded with their
figures, promoted or refused, rolled back to the previous version and past the first one to
the stock model, every decision audited; ``dictation models`` lists and rolls back; the
worker's processing path decodes a physician's dictations with that physician's current
model and records which one, falls back to the stock model when the adapted folder is missing
or damaged; the speech-model cache is bounded by the models' folder sizes.

Real SQLite, real audit chain, real tiny.en (copied as the "adapted" model: same weights,
so the adapted transcript must equal the stock one word for word on the same machine)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.adaptation import versions
from pipeline.cli import main
from pipeline.commands import models as models_cmd
from pipeline.core import audit, files
from pipeline.core.db.core import AuditEvent, TranscriptRow
from pipeline.core.errors import ConfigError, ConflictError, ModelNotFoundError, NotFoundError
from pipeline.core.records import DictationMeta
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.speech import models as speech_models

FIGURES = {
    "candidate": {"wer": 0.11, "term_error_rate": 0.20, "general_wer": 0.081},
    "baseline": {"wer": 0.14, "term_error_rate": 0.31, "general_wer": 0.079},
    "baseline_model": "base",
    "pairs": 64,
    "dictations": 18,
    "held_back": 4,
}


def _fake_model(folder: Path) -> Path:
    """A folder with the files a CTranslate2 Whisper folder must hold (not loadable: for
    the bookkeeping tests, which never load it)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in speech_models.REQUIRED_FILES:
        (folder / name).write_text("{}")
    return folder


def _candidate(s: Session, settings: Settings, physician: str | None = "dr-smith",
               held: tuple[str, ...] = ("d1", "d2"), **kw: Any) -> versions.ModelVersion:
    number = versions.next_version(s, physician)
    folder = _fake_model(versions.model_dir(settings, physician, number))
    return versions.record_candidate(
        s, physician_id=physician, base_model="base", path=folder, metrics=FIGURES,
        training={"epochs": 3, "seconds": 1800.0, "steps": 180, "device": "cpu"},
        held_back_ids=held, **kw)


def _events(s: Session, action: str) -> list[AuditEvent]:
    return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)
                          .order_by(AuditEvent.id)))


def test_model_dir_is_per_physician_and_version(settings: Settings) -> None:
    assert versions.model_dir(settings, "dr-smith", 3) == (
        settings.data_path / "adaptation" / "dr-smith" / "models" / "v3")
    assert versions.model_dir(settings, None, 1).parent.parent.name == versions.PRACTICE
    for bad in ("../etc", "a/b", "", versions.PRACTICE):
        with pytest.raises(ConfigError):
            versions.model_dir(settings, bad, 1)
    with pytest.raises(ConfigError):
        versions.model_dir(settings, "dr-smith", 0)
    assert models_cmd.PRACTICE == versions.PRACTICE


def test_candidates_are_numbered_per_physician_with_figures_and_held_back_ids(
        settings: Settings) -> None:
    with open_store(settings).session() as s:
        a = _candidate(s, settings, "dr-smith", held=("d2", "d1", "d2"))
        b = _candidate(s, settings, "dr-smith", held=("d3",), parent_version_id=a.id)
        c = _candidate(s, settings, "dr-patel", held=("d9",))
        p = _candidate(s, settings, None, held=("d7",))
        assert (a.version, b.version, c.version, p.version) == (1, 2, 1, 1)
        assert a.status == "candidate" and not a.is_current
        assert a.held_back_ids == ["d1", "d2"]  # de-duplicated, sorted
        assert b.parent_version_id == a.id
        assert a.metrics["candidate"]["wer"] == 0.11 and a.training["steps"] == 180
        assert versions.held_back_ids(s, "dr-smith") == {"d1", "d2", "d3", "d7"}
        assert versions.held_back_ids(s, "dr-patel") == {"d9", "d7"}
        assert versions.held_back_ids(s) == {"d1", "d2", "d3", "d7", "d9"}
        listed = [(v.physician_id, v.version) for v in versions.list_versions(s)]
        assert listed == [(None, 1), ("dr-patel", 1), ("dr-smith", 1), ("dr-smith", 2)]
        assert [v.version for v in versions.list_versions(s, "dr-smith")] == [1, 2]
        assert versions.current_model(s, "dr-smith") is None  # a candidate is not used
        assert len(_events(s, "model_candidate")) == 4
        with pytest.raises(NotFoundError):
            _candidate(s, settings, parent_version_id=9999)


def test_promote_makes_current_and_retires_the_previous_audited_with_ids(
        settings: Settings) -> None:
    with open_store(settings).session() as s:
        v1 = _candidate(s, settings)
        versions.promote(s, v1.id, "cli:admin")
        choice = versions.current_model(s, "dr-smith")
        assert choice == versions.ModelChoice(Path(v1.path), v1.id, 1, "dr-smith")
        assert choice.label == "adapted:dr-smith/v1"
        v2 = _candidate(s, settings, parent_version_id=v1.id)
        versions.promote(s, v2.id, "system:adaptation", metrics={"gate": "passed"})
        assert (v1.status, v1.is_current) == ("retired", False)
        assert (v2.status, v2.is_current) == ("promoted", True)
        assert v2.promoted_at is not None and v2.metrics["gate"] == "passed"
        assert v2.metrics["candidate"]["wer"] == 0.11  # merged, not replaced
        assert versions.current_model(s, "dr-smith").version_id == v2.id  # type: ignore[union-attr]
        assert versions.current_model(s, "dr-patel") is None  # nobody else's model
        events = _events(s, "model_promote")
        assert [e.object_id for e in events] == [str(v1.id), str(v2.id)]
        assert events[1].actor == "system:adaptation"
        assert events[1].object_type == "speech_model_version"
        assert events[1].detail == {"physician_id": "dr-smith", "version": 2,
                                    "status": "promoted", "previous_version_id": v1.id}
        with pytest.raises(ConflictError, match="only a candidate"):
            versions.promote(s, v2.id, "cli:admin")
        assert audit.verify(s).ok


def test_a_candidate_without_its_model_files_is_never_promoted(settings: Settings) -> None:
    with open_store(settings).session() as s:
        v1 = _candidate(s, settings)
        (Path(v1.path) / "model.bin").unlink()
        with pytest.raises(ModelNotFoundError, match=r"lacks model\.bin"):
            versions.promote(s, v1.id, "cli:admin")
        assert v1.status == "candidate" and versions.current_model(s, "dr-smith") is None


def test_refused_candidate_keeps_its_figures_and_reason(settings: Settings) -> None:
    with open_store(settings).session() as s:
        v1 = _candidate(s, settings)
        versions.refuse(s, v1.id, "general WER rose 0.8 points (limit 0.5)",
                        metrics={"gate": "refused"})
        row = versions.get_version(s, v1.id)
        assert row.status == "refused" and not row.is_current
        assert row.reason == "general WER rose 0.8 points (limit 0.5)"
        assert row.metrics["baseline"]["general_wer"] == 0.079
        (event,) = _events(s, "model_refuse")
        assert event.actor == versions.ACTOR and event.object_id == str(v1.id)
        assert "WER" not in json.dumps(event.detail)  # the reason stays on the row
        with pytest.raises(ConflictError):
            versions.promote(s, v1.id, "cli:admin")
        with pytest.raises(ConflictError):
            versions.refuse(s, v1.id, "again")
        with pytest.raises(ConfigError):
            versions.refuse(s, _candidate(s, settings).id, "  ")
        with pytest.raises(NotFoundError):
            versions.refuse(s, 9999, "no such version")


def test_rollback_walks_back_one_version_at_a_time_then_to_stock(settings: Settings) -> None:
    with open_store(settings).session() as s:
        v1, v2, v3 = (_candidate(s, settings) for _ in range(3))
        for v in (v1, v2, v3):
            versions.promote(s, v.id, "cli:admin")
        refused = _candidate(s, settings)
        versions.refuse(s, refused.id, "WER rose")

        gone = versions.rollback(s, "dr-smith", "cli:admin", reason="sounds worse")
        assert gone.id == v3.id and gone.status == "rolled_back" and not gone.is_current
        assert gone.reason == "sounds worse"
        assert versions.current_model(s, "dr-smith").version_id == v2.id  # type: ignore[union-attr]
        assert v2.status == "promoted"

        # a newer promotion after a rollback: rolling it back returns to v2, not to v3
        v5 = _candidate(s, settings)
        versions.promote(s, v5.id, "cli:admin")
        assert v2.status == "retired"
        versions.rollback(s, "dr-smith", "cli:admin")
        assert versions.current_model(s, "dr-smith").version_id == v2.id  # type: ignore[union-attr]

        versions.rollback(s, "dr-smith", "cli:admin")
        assert versions.current_model(s, "dr-smith").version_id == v1.id  # type: ignore[union-attr]
        last = versions.rollback(s, "dr-smith", "cli:admin")  # past the first: stock model
        assert last.id == v1.id and versions.current_model(s, "dr-smith") is None
        with pytest.raises(ConflictError, match="stock model"):
            versions.rollback(s, "dr-smith", "cli:admin")
        statuses = {v.version: v.status for v in versions.list_versions(s, "dr-smith")}
        assert statuses == {1: "rolled_back", 2: "rolled_back", 3: "rolled_back",
                            4: "refused", 5: "rolled_back"}
        events = _events(s, "model_rollback")
        assert len(events) == 4 and all(e.actor == "cli:admin" for e in events)
        assert events[0].detail["restored_version_id"] == v2.id
        assert events[-1].detail["restored"] == "stock"
        assert audit.verify(s).ok


def test_practice_wide_model_serves_physicians_without_their_own(settings: Settings) -> None:
    with open_store(settings).session() as s:
        practice = _candidate(s, settings, None)
        versions.promote(s, practice.id, "cli:admin")
        own = _candidate(s, settings, "dr-smith")
        versions.promote(s, own.id, "cli:admin")
        assert versions.current_model(s, "dr-smith").version_id == own.id  # type: ignore[union-attr]
        patel = versions.current_model(s, "dr-patel")
        assert patel is not None and patel.version_id == practice.id
        assert patel.label == "adapted:_practice/v1"
        assert versions.current_model(s, None).version_id == practice.id  # type: ignore[union-attr]
        assert versions.current_model(s, "dr-patel", practice_fallback=False) is None


def test_models_command_lists_versions_and_rolls_back(settings: Settings,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    data = str(settings.data_dir)
    assert main(["models", "--json", "--data-dir", data]) == 0  # no database: none adapted
    assert json.loads(capsys.readouterr().out)["adapted"] == []
    assert not (settings.data_path / "dictation.db").exists()  # not created only to look
    with open_store(settings).session() as s:
        v1, v2 = _candidate(s, settings), _candidate(s, settings)
        versions.promote(s, v1.id, "cli:admin")
        versions.promote(s, v2.id, "cli:admin")
        versions.refuse(s, _candidate(s, settings, "dr-patel").id, "term errors rose")

    assert main(["models", "--json", "--data-dir", data]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {m["name"] for m in out["models"]} >= {"tiny.en", "base"}  # shipped models stay
    rows = {(a["physician_id"], a["version"]): a for a in out["adapted"]}
    assert rows[("dr-smith", 2)]["current"] and rows[("dr-smith", 2)]["status"] == "promoted"
    assert rows[("dr-smith", 2)]["metrics"]["candidate"]["term_error_rate"] == 0.20
    assert rows[("dr-smith", 2)]["held_back"] == 2
    assert rows[("dr-patel", 1)]["reason"] == "term errors rose"

    assert main(["models", "--data-dir", data, "--physician", "dr-smith"]) == 0
    table = capsys.readouterr().out
    assert "Adapted models" in table and "14.0→11.0" in table and "31.0→20.0" in table
    assert "dr-patel" not in table

    assert main(["models", "rollback", "--physician", "dr-smith", "--data-dir", data,
                 "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["rolled_back"] == "adapted:dr-smith/v2" and done["now"] == "adapted:dr-smith/v1"
    assert main(["models", "--data-dir", data, "rollback", "--physician", "dr-smith"]) == 0
    assert "now use stock model" in capsys.readouterr().out
    assert main(["models", "rollback", "--physician", "dr-smith", "--data-dir", data]) == 1
    assert "nothing to roll back" in capsys.readouterr().err


# --- the speech-model cache -----------------------------------------------------------------


def test_model_cache_drops_least_recently_used_beyond_its_bound() -> None:
    cache = speech_models.ModelCache(limit_bytes=250)
    loads: list[str] = []

    def loader(name: str) -> Any:
        def load() -> object:
            loads.append(name)
            return object()
        return load

    a = cache.get(("a",), loader("a"), size_bytes=100, name="a")
    b = cache.get(("b",), loader("b"), size_bytes=100, name="b")
    assert cache.get(("a",), loader("a"), size_bytes=100, name="a") is a  # a: most recent
    cache.get(("c",), loader("c"), size_bytes=100, name="c")  # 300 > 250: b goes
    assert [e["name"] for e in cache.entries()] == ["a", "c"]
    assert cache.get(("b",), loader("b"), size_bytes=100, name="b") is not b  # loaded again
    assert loads == ["a", "b", "c", "b"]
    big = cache.get(("big",), loader("big"), size_bytes=1000, name="big")
    assert [e["name"] for e in cache.entries()] == ["big"]  # the one asked for always stays
    assert cache.get(("big",), loader("big"), size_bytes=1000, name="big") is big
    assert all(e["load_s"] >= 0 for e in cache.entries())


@pytest.mark.slow
def test_loading_models_beyond_the_bound_evicts_and_logs_load_time(
        settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Two real models, a bound of 100 MB (tiny.en is 76 MB): the second load drops the first;
    each load is logged with its seconds and the model's name only."""
    copy = tmp_path / "copy-of-tiny"
    shutil.copytree(speech_models.model_files("tiny.en", settings), copy)
    settings.model_cache_mb = 100
    speech_models.model_cache.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.speech.models"):
        first = speech_models.load(settings)
        second = speech_models.load(settings, str(copy), label="adapted:dr-smith/v9")
    assert first is not second
    assert [e["name"] for e in speech_models.model_cache.entries()] == ["adapted:dr-smith/v9"]
    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded")]
    assert loaded[0].startswith("loaded model tiny.en in ") and " s (" in loaded[0]
    assert loaded[1].startswith("loaded model adapted:dr-smith/v9 in ")
    assert any("tiny.en dropped from the cache" in r.getMessage() for r in caplog.records)
    assert str(tmp_path) not in caplog.text  # names, not paths
    speech_models.model_cache.clear()


# --- the worker's processing path -------------------------------------------------------------


def _adapted_tiny(settings: Settings, physician: str, *,
                  seal: bool = False) -> versions.ModelVersion:
    """A real "adapted" model: the stock tiny.en folder copied into the version folder (sealed
    like patient files when ``seal``), recorded and promoted."""
    with open_store(settings).session() as s:
        number = versions.next_version(s, physician)
        folder = versions.model_dir(settings, physician, number)
        folder.mkdir(parents=True)
        for f in speech_models.model_files("tiny.en", settings).iterdir():
            if f.is_file():
                if seal:
                    files.write_bytes(folder / f.name, f.read_bytes(), settings)
                else:
                    shutil.copy2(f, folder / f.name)
        row = versions.record_candidate(s, physician_id=physician, base_model="tiny.en",
                                        path=folder, metrics=FIGURES, held_back_ids=["x"])
        versions.promote(s, row.id, "system:adaptation")
        return row


def _stored_model(settings: Settings, dictation_id: str) -> str:
    with open_store(settings).session() as s:
        return s.scalars(select(TranscriptRow.model)
                         .where(TranscriptRow.dictation_id == dictation_id)).one()


def _meta(physician: str) -> DictationMeta:
    return DictationMeta(physician_id=physician, document_type="consult_note")


@pytest.mark.slow
def test_worker_decodes_each_physicians_dictation_with_their_current_model(
        settings: Settings, speech: Path) -> None:
    from pipeline.service.process import process_file

    stock = process_file(speech, settings, _meta("dr-patel"))  # before any adaptation
    assert stock.transcript.model == "tiny.en"
    row = _adapted_tiny(settings, "dr-smith")

    adapted = process_file(speech, settings, _meta("dr-smith"))
    assert adapted.transcript.model == "adapted:dr-smith/v1"
    assert _stored_model(settings, adapted.dictation.id) == "adapted:dr-smith/v1"
    # the same weights: the same words (same machine, same process, deterministic decoding)
    assert adapted.transcript.raw_text == stock.transcript.raw_text
    assert any(e["name"] == "adapted:dr-smith/v1"
               for e in speech_models.model_cache.entries())

    other = process_file(speech, settings, _meta("dr-patel"))
    assert other.transcript.model == "tiny.en"
    assert _stored_model(settings, other.dictation.id) == "tiny.en"

    with open_store(settings).session() as s:
        versions.rollback(s, "dr-smith", "cli:admin")
    back = process_file(speech, settings, _meta("dr-smith"))
    assert back.transcript.model == "tiny.en"  # the next dictation after a rollback
    assert row.version == 1

    settings.adapted_models = False
    _adapted_tiny(settings, "dr-patel")
    assert process_file(speech, settings, _meta("dr-patel")).transcript.model == "tiny.en"


@pytest.mark.slow
def test_missing_or_damaged_adapted_model_falls_back_to_stock_with_a_warning(
        settings: Settings, speech: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.service.process import choose_model, process_file

    missing = _adapted_tiny(settings, "dr-smith")
    shutil.rmtree(missing.path)
    with caplog.at_level(logging.WARNING, logger="pipeline.service.process"):
        result = process_file(speech, settings, _meta("dr-smith"))
    assert result.transcript.model == "tiny.en"
    assert result.draft.id  # the dictation was not failed
    assert _stored_model(settings, result.dictation.id) == "tiny.en"
    (warning,) = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
    assert f"version_id={missing.id}" in warning and "ModelNotFoundError" in warning
    assert str(settings.data_path) not in warning

    damaged = _adapted_tiny(settings, "dr-patel")
    model_bin = Path(damaged.path) / "model.bin"
    model_bin.write_bytes(model_bin.read_bytes()[: model_bin.stat().st_size // 2])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.service.process"):
        assert choose_model("dr-patel", settings) == (settings.model, None)
    assert "RuntimeError" in caplog.text


@pytest.mark.slow
def test_adapted_model_sealed_at_rest_is_decrypted_into_memory(settings: Settings,
                                                               speech: Path) -> None:
    """A version folder encrypted like the audio it learned from loads without a plain copy
    on disk and decodes as the plain stock model does."""
    from pipeline.service.process import process_file

    row = _adapted_tiny(settings, "dr-smith", seal=True)
    assert files.is_encrypted(Path(row.path) / "model.bin")
    result = process_file(speech, settings, _meta("dr-smith"))
    assert result.transcript.model == "adapted:dr-smith/v1"
    stock = process_file(speech, settings, _meta("dr-patel"))
    assert result.transcript.raw_text == stock.transcript.raw_text
    assert sorted(p.name for p in Path(row.path).iterdir()) == sorted(
        p.name for p in speech_models.model_files("tiny.en", settings).iterdir()
        if p.is_file())
