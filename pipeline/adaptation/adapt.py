"""The whole adaptation step for one physician (or the practice): pairs -> train -> gate.

``adapt_physician(settings, physician_id)`` does, in order:

1. Under a per-physician lock (two runs for the same physician never overlap), read which
   model decodes the physician's dictations now (``versions.current_model``; else the
   stock ``settings.model``) and the dictations earlier versions were judged on.
2. Collect the training pairs of every signed draft (``pairs.collect_pairs``) and store
   their windows, encrypted, under ``<data_dir>/adaptation/<physician>/pairs/``
   (``pairs.write_pairs``), so each dictation's audio is decoded once.
3. Split by dictation: the dictations earlier versions were judged on stay held back, and
   ``held_back_share`` of the others (at least ``min_held_back``) are held back too, chosen
   by a seeded hash of their ids. Held-back dictations are never trained on, now or later:
   their ids are stored with the version (``held_back_ids``).
4. Skip, with the reason, when too little is left to train on (``min_train_dictations``,
   ``min_train_audio_s``).
5. Train from the current model (``train.train``; it continues an adapted lineage when the
   current version grew from the configured stock model, else starts from the stock model)
   and write the candidate as a CTranslate2 folder at ``versions.model_dir`` (``convert``).
6. Decode the held-back windows and the general-speech samples with the candidate and with
   the current model (``gate.evaluate_model``), record the candidate with both figures
   (``versions.record_candidate``), and promote or refuse it (``gate.decide``).

No database session is held while training: the lock is a file (``.adapt.lock``) and the
two short sessions read, then write. Logs carry ids, counts, seconds and rates only.

What lives on disk (all under the data directory, folders 0700, files 0600): the pairs
(encrypted through ``pipeline.core.files``), and each candidate's CTranslate2 folder, whose
``model.bin`` -- weights learned from patient audio -- is sealed like the audio when
``settings.encrypt_files`` (``files.seal``: the plain file CTranslate2's writer produced is
replaced atomically by the encrypted one; the loaders decrypt it into memory). A refused
candidate's folder is deleted (its figures stay in the database): nothing can promote it
later, and it would only be one more copy of patient-derived data.
No training checkpoint is written: the best weights so far are kept in memory, and a run
that dies is started again from the beginning (minutes on a CPU; ``docs/adaptation.md``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.adaptation import gate as gate_mod
from pipeline.adaptation import pairs as pairs_mod
from pipeline.adaptation import versions
from pipeline.adaptation.gate import Figures, GateOptions
from pipeline.adaptation.pairs import PairOptions, PairSet
from pipeline.adaptation.train import TrainOptions
from pipeline.core import crypto, files
from pipeline.core.db.core import DraftRow
from pipeline.core.db.model_versions import ModelVersion
from pipeline.core.db.review import Signature
from pipeline.core.errors import ConfigError, ConflictError
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.speech import models as speech_models

__all__ = [
    "AdaptOptions",
    "AdaptReport",
    "adapt_physician",
    "split_held_back",
    "due_physicians",
    "new_signed_dictations",
    "adaptation_dir",
]

log = logging.getLogger(__name__)

#: progress callback: (phase, done, total). Phases: "pairs", "encode", "train", "validate",
#: "evaluate candidate", "evaluate current".
Progress = Callable[[str, int, int], None]


@dataclass
class AdaptOptions:
    """When to adapt, how much to hold back, and the options of each step."""

    pairs: PairOptions = field(default_factory=PairOptions)
    train: TrainOptions = field(default_factory=TrainOptions)
    gate: GateOptions = field(default_factory=GateOptions)
    #: share of the (not yet held-back) signed dictations held back to judge the candidate
    held_back_share: float = 0.2
    #: at least this many held-back dictations (old and new together)
    min_held_back: int = 2
    #: fewer training dictations than this (after the hold-back): skipped
    min_train_dictations: int = 8
    #: less training audio than this (seconds): skipped
    min_train_audio_s: float = 300.0
    #: the nightly flow adapts a physician once this many dictations were signed since
    #: their last version (or in all, before the first)
    min_new_dictations: int = 5
    #: keep a refused candidate's model folder (default: deleted; its figures stay)
    keep_refused: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.held_back_share < 1.0:
            raise ConfigError(f"held_back_share is {self.held_back_share}; expected a share "
                              "between 0 and 1.")
        if self.min_held_back < 1:
            raise ConfigError(f"min_held_back is {self.min_held_back}; the gate needs at "
                              "least 1 held-back dictation.")


@dataclass
class AdaptReport:
    """What one adaptation run did: ids, counts, seconds and figures only (no text)."""

    physician_id: str | None
    status: str  # "promoted", "refused", "skipped", "unchanged"
    reason: str
    version_id: int | None = None
    version: int | None = None
    base_model: str = ""
    baseline_model: str = ""
    pairs: int = 0
    dictations: int = 0
    held_back: int = 0
    train_audio_s: float = 0.0
    skipped_drafts: int = 0
    candidate: Figures | None = None
    current: Figures | None = None
    training: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (for the CLI's ``--json`` and the flow's result)."""
        return {
            "physician_id": self.physician_id, "status": self.status, "reason": self.reason,
            "version_id": self.version_id, "version": self.version,
            "base_model": self.base_model, "baseline_model": self.baseline_model,
            "pairs": self.pairs, "dictations": self.dictations, "held_back": self.held_back,
            "train_audio_s": round(self.train_audio_s, 1),
            "skipped_drafts": self.skipped_drafts,
            "candidate": self.candidate.to_dict() if self.candidate else None,
            "current": self.current.to_dict() if self.current else None,
            "training": self.training, "seconds": round(self.seconds, 1),
        }


# --------------------------------------------------------------------------------------------
# helpers


def adaptation_dir(settings: Settings, physician_id: str | None) -> Path:
    """``<data_dir>/adaptation/<physician>/`` (``_practice`` for the practice)."""
    # versions.model_dir checks the id and names the folder; its grandparent is this one
    return versions.model_dir(settings, physician_id, 1).parent.parent


@contextlib.contextmanager
def _locked(settings: Settings, physician_id: str | None) -> Iterator[None]:
    """One adaptation per physician at a time (a file lock: no database session held)."""
    folder = crypto.private_mkdir(adaptation_dir(settings, physician_id))
    with open(folder / ".adapt.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = physician_id or "the practice"
            raise ConflictError(
                f"An adaptation for {who} is already running; wait for it to finish."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _rank(seed: int, dictation_id: str) -> str:
    return hashlib.sha256(f"held-back:{seed}:{dictation_id}".encode()).hexdigest()


def split_held_back(
    dictation_ids: Sequence[str], earlier: set[str], options: AdaptOptions
) -> tuple[list[str], list[str]]:
    """(held back, training) dictation ids.

    Dictations earlier versions were judged on stay held back. Of the others, enough are
    held back that the held-back set is ``held_back_share`` of all (and at least
    ``min_held_back``), chosen by a seeded hash of their ids (the same ids give the same
    split on every run and machine). Pure.
    """
    ids = list(dict.fromkeys(dictation_ids))
    old = [d for d in ids if d in earlier]
    fresh = [d for d in ids if d not in earlier]
    want = max(options.min_held_back, math.ceil(options.held_back_share * len(ids)))
    more = max(0, want - len(old))
    more = min(more, max(len(fresh) - 1, 0))  # always leave something to train on
    chosen = set(sorted(fresh, key=lambda d: _rank(options.seed, d))[:more])
    held = [d for d in ids if d in earlier or d in chosen]
    return held, [d for d in ids if d not in held]


def _collect(session: Session, settings: Settings, physician_id: str | None,
             options: AdaptOptions) -> list[PairSet]:
    """Every signed draft's pairs, per physician (all configured ones for the practice)."""
    who = [physician_id] if physician_id is not None else list(settings.physicians)
    return [pairs_mod.collect_pairs(session, settings, pid, options.pairs) for pid in who]


def _stock(settings: Settings) -> tuple[str, Path]:
    resolved = speech_models.resolve(settings.model, settings)
    return settings.model, resolved.path


def _baseline(session: Session, settings: Settings, physician_id: str | None
              ) -> tuple[Path, str, ModelVersion | None]:
    """(folder, label, version row) of the model that decodes the physician's dictations
    now: their current adapted version (or the practice's), else the stock model."""
    choice = versions.current_model(session, physician_id)
    if choice is not None and choice.path.is_dir():
        return choice.path, choice.label, session.get(ModelVersion, choice.version_id)
    name, path = _stock(settings)
    return path, name, None


def new_signed_dictations(session: Session, physician_id: str) -> int:
    """Signed dictations of ``physician_id`` since their newest model version was recorded
    (all of them before the first)."""
    since = session.scalar(
        select(func.max(ModelVersion.created_at)).where(ModelVersion.physician_id == physician_id)
    )
    query = (
        select(func.count(func.distinct(DraftRow.dictation_id)))
        .join(Signature, (Signature.draft_id == DraftRow.id) & Signature.addendum_id.is_(None))
        .where(DraftRow.physician_id == physician_id,
               DraftRow.status.in_(pairs_mod.SIGNED_STATUSES))
    )
    if since is not None:
        query = query.where(Signature.signed_at > since)
    return int(session.scalar(query) or 0)


def due_physicians(session: Session, settings: Settings, options: AdaptOptions | None = None,
                   *, only: Sequence[str] | None = None) -> list[tuple[str, int]]:
    """(physician id, new signed dictations) of each physician due for adaptation: at least
    ``min_new_dictations`` signed since their last version. ``only`` limits the ids."""
    options = options or AdaptOptions()
    ids = list(only) if only else list(settings.physicians)
    due = []
    for pid in ids:
        n = new_signed_dictations(session, pid)
        if n >= options.min_new_dictations:
            due.append((pid, n))
    return due


def _gate_options(options: AdaptOptions, settings: Settings) -> GateOptions:
    """The gate's options; general samples the training mixes in are not judged on."""
    opts = options.gate
    if options.train.general_mix_share > 0:
        folder = (options.train.general_dir or opts.general_dir
                  or settings.samples_dir / "general_speech")
        mixed, _ = gate_mod.split_general([g[0] for g in gate_mod.general_samples(folder)])
        opts = replace(opts, exclude_general=tuple(sorted({*opts.exclude_general, *mixed})))
    return opts


# --------------------------------------------------------------------------------------------
# the step


def adapt_physician(
    settings: Settings,
    physician_id: str | None,
    options: AdaptOptions | None = None,
    *,
    progress: Progress | None = None,
) -> AdaptReport:
    """Adapt the speech model of ``physician_id`` (None: one model for the whole practice,
    trained on every configured physician's dictations) and return what happened.

    A candidate is recorded with its figures and the current model's, then promoted or
    refused by the gate; too little data gives a ``skipped`` report, and a training run
    whose validation loss never beat the starting model an ``unchanged`` one (nothing
    recorded). ``ConflictError`` when an adaptation for the same physician is running.
    """
    options = options or AdaptOptions()
    started = time.perf_counter()
    who = physician_id or versions.PRACTICE
    store = open_store(settings)
    with _locked(settings, physician_id):
        if progress:
            progress("pairs", 0, 1)
        with store.session() as s:
            baseline_path, baseline_label, baseline_row = _baseline(s, settings, physician_id)
            earlier = versions.held_back_ids(s, physician_id)
            collected = _collect(s, settings, physician_id, options)
            version = versions.next_version(s, physician_id)
        stored = [pairs_mod.write_pairs(ps, settings) for ps in collected]
        all_pairs = [p for ps in stored for p in ps.pairs]
        skipped_drafts = sum(len(ps.skipped) for ps in stored)
        if progress:
            progress("pairs", 1, 1)
        dictations = list(dict.fromkeys(p.dictation_id for p in all_pairs))
        held, training = split_held_back(dictations, earlier, options)
        held_set = set(held)
        train_pairs = [p for p in all_pairs if p.dictation_id not in held_set]
        eval_pairs = [p for p in all_pairs if p.dictation_id in held_set]
        train_audio = sum(p.duration_s for p in train_pairs)
        report = AdaptReport(
            physician_id=physician_id, status="skipped", reason="",
            baseline_model=baseline_label, pairs=len(train_pairs),
            dictations=len(training), held_back=len(held), train_audio_s=train_audio,
            skipped_drafts=skipped_drafts,
        )
        log.info("adapt physician=%s dictations=%d held_back=%d train_pairs=%d "
                 "train_audio_s=%.0f skipped_drafts=%d baseline=%s", who, len(dictations),
                 len(held), len(train_pairs), train_audio, skipped_drafts, baseline_label)
        problem = _too_little(len(training), train_audio, len(held), options)
        if problem:
            report.reason = problem
            report.seconds = time.perf_counter() - started
            log.info("adapt physician=%s skipped: %s", who, problem)
            return report

        stock_name, stock_path = _stock(settings)
        parent = baseline_row if (baseline_row is not None
                                  and baseline_row.base_model == stock_name
                                  and baseline_row.physician_id == physician_id) else None
        start_path = Path(parent.path) if parent is not None else stock_path
        report.base_model = (versions.label(physician_id, parent.version)
                             if parent is not None else stock_name)

        from pipeline.adaptation import train as train_mod
        from pipeline.adaptation.convert import write_ct2

        result = train_mod.train(train_pairs, start_path, options.train, settings=settings,
                                 progress=progress)
        report.training = {**result.to_dict(), "options": options.train.to_dict()}
        if not result.changed:
            report.status = "unchanged"
            report.reason = ("training did not lower the validation loss below the "
                             "starting model's; nothing to judge")
            report.seconds = time.perf_counter() - started
            log.info("adapt physician=%s unchanged after %d steps", who, result.steps)
            return report

        out = versions.model_dir(settings, physician_id, version)
        crypto.private_mkdir(out.parent)
        if out.exists():  # left by a run that died before recording it (no row has it)
            shutil.rmtree(out)
        write_ct2(result.model, out, like=stock_path)
        del result  # the float32 PyTorch model: hundreds of MB, no longer needed
        if settings.encrypt_files:
            # the weights learned from patient audio are sealed like the audio (the stock
            # config, tokenizer and vocabulary beside them are not patient data)
            files.seal(out / "model.bin", settings)

        gate_options = _gate_options(options, settings)
        evaluation = gate_mod.evaluation_set(eval_pairs, settings, gate_options)
        candidate = gate_mod.evaluate_model(out, evaluation, settings, gate_options,
                                            progress=progress, phase="evaluate candidate")
        current = gate_mod.evaluate_model(baseline_path, evaluation, settings, gate_options,
                                          progress=progress, phase="evaluate current")
        decision = gate_mod.decide(candidate, current, gate_options)
        report.candidate, report.current = candidate, current
        report.version = version

        metrics = {
            "candidate": candidate.to_dict(),
            "baseline": current.to_dict(),
            "baseline_model": baseline_label,
            "pairs": len(train_pairs),
            "dictations": len(training),
            "held_back": len(held),
            "train_audio_s": round(train_audio, 1),
            "gate": {**gate_options.to_dict(), "reasons": list(decision.reasons)},
            "evaluation": evaluation.counts(),
        }
        with store.session() as s:
            row = versions.record_candidate(
                s, physician_id=physician_id, base_model=stock_name, path=out,
                metrics=metrics, training=report.training, held_back_ids=held,
                version=version, parent_version_id=parent.id if parent is not None else None,
            )
            report.version_id = row.id
            if decision.promote:
                versions.promote(s, row.id, versions.ACTOR)
                report.status = "promoted"
            else:
                versions.refuse(s, row.id, decision.summary)
                report.status = "refused"
        report.reason = decision.summary
        if report.status == "refused" and not options.keep_refused:
            shutil.rmtree(out, ignore_errors=True)
        report.seconds = time.perf_counter() - started
        log.info("adapt physician=%s version=%d status=%s wer=%s->%s terms=%s->%s "
                 "general=%s->%s seconds=%.0f", who, version, report.status,
                 _r(current.wer), _r(candidate.wer), _r(current.term_error_rate),
                 _r(candidate.term_error_rate), _r(current.general_wer),
                 _r(candidate.general_wer), report.seconds)
        return report


def _r(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _too_little(train_dictations: int, train_audio_s: float, held_back: int,
                options: AdaptOptions) -> str | None:
    """Why there is too little to train on, or None."""
    if held_back < options.min_held_back:
        return (f"too little data: {held_back} dictation(s) could be held back to judge a "
                f"candidate, {options.min_held_back} needed")
    if train_dictations < options.min_train_dictations:
        return (f"too little data: {train_dictations} signed dictation(s) with usable pairs "
                f"to train on, {options.min_train_dictations} needed")
    if train_audio_s < options.min_train_audio_s:
        return (f"too little data: {train_audio_s:.0f} s of training audio, "
                f"{options.min_train_audio_s:.0f} s needed")
    return None

