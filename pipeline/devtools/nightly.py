"""The nightly evaluation flow: accuracy on the sample sets, every night, figures only.

A Prefect flow (deployment ``nightly-evaluation/nightly-evaluation``, ``prefect.yaml``) that
runs ``pipeline.devtools.evaluate`` on each ``samples/<set>/manifest.csv``. It lives here, above
the service layer, because evaluation runs the whole pipeline; importing this module registers
the flow with the warm worker (``pipeline.service.flows.register_flow``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipeline.devtools import evaluate
from pipeline.service import flows

__all__ = ["nightly_evaluation", "evaluate_set"]

log = logging.getLogger(__name__)


@task(name="evaluate-set", persist_result=False, cache_policy=NO_CACHE)
def evaluate_set(manifest: str, limit: int | None = None) -> dict[str, Any]:
    """Evaluate one sample set; returns aggregate figures only (no text)."""
    with flows.slot_hold():  # transcribing the set holds a slot, like a dictation
        report = evaluate.run_evaluation(Path(manifest), flows.current_settings(), limit=limit)
    return {
        "files": len(report.files),
        "failed": sum(1 for f in report.files if getattr(f, "error", None)),
        "elapsed_s": round(report.elapsed_s, 1),
        "results": str(report.out_dir) if report.out_dir else None,
    }


@flow(name="nightly-evaluation", persist_result=False, log_prints=False)
def nightly_evaluation(sets: list[str] | None = None, limit: int | None = None
                       ) -> dict[str, Any]:
    """Word error rate on the sample sets (every ``samples/<set>/manifest.csv``, or the
    named ``sets``) with ``pipeline.devtools.evaluate.run_evaluation``; results go to
    ``<data>/results/<timestamp>/``. Returns aggregate figures per set."""
    settings = flows.current_settings()
    root = settings.samples_dir
    names = sets or sorted(p.parent.name for p in root.glob("*/manifest.csv"))
    summary: dict[str, Any] = {}
    for name in names:
        summary[name] = evaluate_set(str(root / name / "manifest.csv"), limit)
    log.info("nightly evaluation sets=%d", len(summary))
    return summary


flows.register_flow("nightly-evaluation", nightly_evaluation)
