"""``dictation bench-web``: worklist and editor server time on a seeded temporary database.

Seeds 10,000 drafts (and one 10-minute dictation) into a temporary SQLite database, then
requests the pages through the real app in-process and reads the app's own
``Server-Timing`` (request in, response out, rendering included). Targets: worklist
<= 150 ms, editor for a 10-minute dictation <= 200 ms.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.core.settings import get_settings

__all__ = ["register"]

WORKLIST_TARGET_MS = 150.0
EDITOR_TARGET_MS = 200.0


def _ms(response) -> float:  # type: ignore[no-untyped-def]
    m = re.search(r"dur=([\d.]+)", response.headers.get("server-timing", ""))
    return float(m.group(1)) if m else float("nan")


def _run(args: argparse.Namespace) -> int:
    from fastapi.testclient import TestClient

    from pipeline.core.store import open_store
    from pipeline.review.users import create_user
    from pipeline.web.app import create_app
    from pipeline.web.seed import add_draft, bulk_drafts, synthetic_transcript

    base = get_settings()
    physicians = ["dr-bench-a", "dr-bench-b", "dr-bench-c"]
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        settings = base.model_copy(update={"data_dir": Path(tmp), "database_url": None,
                                           "physicians": physicians, "secret_key": None})
        t0 = time.perf_counter()
        store = open_store(settings)
        with store.session() as s:
            bulk_drafts(s, args.drafts, physicians)
            create_user(s, "bench-secretary", "bench-password", "secretary", physicians[:2])
            create_user(s, "bench-admin", "bench-password", "admin")
            text, segments = synthetic_transcript(600.0)
            long_id = add_draft(s, text=text, segments=segments, physician_id=physicians[0],
                                patient_name="Bench Patient", mrn="BENCH1",
                                duration_s=600.0)
        seed_s = time.perf_counter() - t0
        with store.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        db_mb = (settings.data_path / "dictation.db").stat().st_size / 1e6
        words = sum(len(seg["words"]) for seg in segments)
        app = create_app(settings)
        results: list[tuple[str, list[float], float]] = []
        for who in ("bench-secretary", "bench-admin"):
            client = TestClient(app, client=("127.0.0.1", 50000))
            page = client.get("/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
            client.post("/login", data={"csrf_token": token, "username": who,
                                        "password": "bench-password"})
            cases = [
                ("worklist, default", "/worklist"),
                ("worklist, page 50", "/worklist?status=all&page=50"),
                ("worklist, search name", "/worklist?status=all&q=patient%2001"),
                ("worklist, search MRN", "/worklist?status=all&q=MRN0004242"),
                ("worklist, STAT filter", "/worklist?status=all&priority=stat"),
            ]
            for label, url in cases:
                client.get(url)  # warm
                times = [_ms(client.get(url)) for _ in range(args.repeat)]
                results.append((f"{label} ({who.split('-')[1]})", times, WORKLIST_TARGET_MS))
            if who == "bench-secretary":
                url = f"/drafts/{long_id}"
                client.get(url)
                times = [_ms(client.get(url)) for _ in range(args.repeat)]
                results.append((f"editor, 10-min dictation ({words} words)", times,
                                EDITOR_TARGET_MS))
            client.close()
    print(f"seeded {args.drafts} drafts + one 10-minute dictation in {seed_s:.1f} s "
          f"(SQLite, temporary, {db_mb:.0f} MB)")
    print(f"{'page':<48} {'median ms':>9} {'p95 ms':>8} {'max ms':>8} {'target':>7}  ok")
    failed = False
    for label, times, target in results:
        times.sort()
        med = statistics.median(times)
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        ok = med <= target
        failed |= not ok
        print(f"{label:<48} {med:>9.1f} {p95:>8.1f} {times[-1]:>8.1f} {target:>7.0f}  "
              f"{'yes' if ok else 'NO'}")
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``bench-web`` command."""
    parser = subparsers.add_parser("bench-web", help="measure worklist and editor server time")
    parser.add_argument("--drafts", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.set_defaults(func=_run)
