"""``dictation bench-crypto [AUDIO]``: what encryption at rest costs, measured in one run.

Side by side: encrypt + decrypt throughput (MB/s) on a 10 MB audio file (AUDIO's bytes
repeated, or a generated file), and for one real dictation (AUDIO, default the first sample
in ``samples/synthetic_medical``) the crypto work it would cause (audio encrypted once when
claimed and decrypted once to transcribe; every output written encrypted) against its
end-to-end pipeline time with a warm model. Nothing touches the real data directory or key
file: a temporary data directory and an in-memory key are used.

Also side by side, measured in the same run:

- the database: N single-row insert transactions and N primary-key selects on a plain
  SQLite file against a SQLCipher one (WAL, synchronous=NORMAL, as the store opens them);
- one dictation end to end as the service runs it (inbox claim and register, probe,
  transcribe, normalize, render, queue, the PDF through LibreOffice with ``--e2e-pdf auto``,
  the default, archive), alternately with encryption off (``encrypt_files`` and
  ``encrypt_database`` False) and on, each in a fresh data directory, after one warm-up run
  (model loaded); medians of ``--repeat-e2e`` runs each. With encryption on every draft file
  is sealed (``files.write_bytes``) and the PDF stage reads the sealed .docx back
  (``files.read_bytes``): both are inside the layer's clock, which therefore includes the
  atomic write's fsync that the plain runs pay too (an upper bound of the crypto's share);
- the PostgreSQL patient columns (``pipeline.core.db.encrypted``): microseconds to seal and
  open one value (a name, an MRN sealed deterministically, a 3 KB draft text), and the
  worklist's name search done in Python over ``--column-rows`` sealed names; with
  ``--pg-url`` (a server where the user may create databases) also on a real PostgreSQL:
  ``--column-rows`` drafts inserted, an MRN lookup, a name search and a worklist page, each
  through ``worklist_rows``, with ``encrypt_columns`` off and on (two throwaway databases).
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.commands.transcribe import settings_from_args

__all__ = ["register", "run", "measure"]

MB = 1_000_000
TARGET_PERCENT = 3.0


def _crypto_round(path: Path, keys: Any, folder: Path) -> tuple[float, float]:
    """(encrypt seconds, decrypt seconds) for ``path``, through the file API."""
    from pipeline.core import crypto

    enc = folder / (path.name + ".enc")
    t0 = time.perf_counter()
    crypto.encrypt_file(path, enc, keys)
    t1 = time.perf_counter()
    with crypto.open_decrypted(enc, keys) as fh:
        while fh.read(crypto.CHUNK_SIZE):
            pass
    t2 = time.perf_counter()
    enc.unlink()
    return t1 - t0, t2 - t1


def measure(audio: Path, settings: Any, *, repeat: int = 5, e2e: bool = True
            ) -> dict[str, Any]:
    """The figures (a flat dict); see the module docstring."""
    from pipeline.core import crypto

    keys = crypto.KeyRing(crypto.generate_key(), source="memory")
    out: dict[str, Any] = {"audio_bytes": audio.stat().st_size}
    with tempfile.TemporaryDirectory(prefix="bench-crypto-") as tmp:
        folder = Path(tmp)
        big = folder / "ten_mb.audio"
        data = audio.read_bytes() or b"\0"
        with big.open("wb") as fh:
            written = 0
            while written < 10 * MB:
                part = data[: 10 * MB - written]
                fh.write(part)
                written += len(part)
        rounds = [_crypto_round(big, keys, folder) for _ in range(repeat)]
        enc_s = statistics.median(r[0] for r in rounds)
        dec_s = statistics.median(r[1] for r in rounds)
        out.update(ten_mb_encrypt_s=round(enc_s, 4), ten_mb_decrypt_s=round(dec_s, 4),
                   encrypt_mb_s=round(10 / enc_s, 1), decrypt_mb_s=round(10 / dec_s, 1),
                   ten_mb_round_trip_s=round(enc_s + dec_s, 4))
        if not e2e:
            return out
        from pipeline.core.records import DictationMeta
        from pipeline.service.process import process_file

        bench_settings = settings.model_copy(update={"data_dir": folder / "var"})
        meta = DictationMeta(physician_id=bench_settings.physicians[0])
        process_file(audio, bench_settings, meta)  # warm-up: model loaded, as in the worker
        t0 = time.perf_counter()
        result = process_file(audio, bench_settings, meta)
        e2e_s = time.perf_counter() - t0
        outputs = [Path(p) for p in result.draft.outputs.values() if p and Path(p).is_file()]
        per_dictation = []
        for _ in range(repeat):
            enc, dec = _crypto_round(audio, keys, folder)  # claim + transcription read
            t0 = time.perf_counter()
            for path in outputs:  # every output written encrypted once
                crypto.write_encrypted(folder / "out.enc", path.read_bytes(), keys)
            per_dictation.append(enc + dec + time.perf_counter() - t0)
        crypto_s = statistics.median(per_dictation)
        out.update(dictation_audio_s=round(result.dictation.audio.duration_s, 1),
                   outputs=len(outputs), outputs_bytes=sum(p.stat().st_size for p in outputs),
                   end_to_end_s=round(e2e_s, 3), dictation_crypto_s=round(crypto_s, 4),
                   overhead_percent=round(100 * crypto_s / e2e_s, 3),
                   ten_mb_vs_end_to_end_percent=round(100 * (enc_s + dec_s) / e2e_s, 2),
                   model=bench_settings.model)
    return out


def measure_database(rows: int, folder: Path) -> dict[str, Any]:
    """Seconds for ``rows`` insert transactions and ``rows`` selects, plain vs SQLCipher."""
    from sqlalchemy import text

    from pipeline.core import crypto, store
    from pipeline.core.settings import Settings

    key = crypto.generate_key()
    out: dict[str, Any] = {"db_rows": rows}
    for label, encrypted in (("plain", False), ("sqlcipher", True)):
        data = folder / f"db-{label}"
        settings = Settings(data_dir=data, data_key=base64.b64encode(key).decode(),
                            encrypt_database=encrypted)
        engine = store.create_db_engine(settings.db_url, settings)
        try:
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, "
                                  "body TEXT)"))
            body = "x" * 400
            t0 = time.perf_counter()
            for i in range(rows):
                with engine.begin() as conn:
                    conn.execute(text("INSERT INTO t VALUES (:i, :n, :b)"),
                                 {"i": i, "n": f"patient {i}", "b": body})
            t1 = time.perf_counter()
            with engine.connect() as conn:
                for i in range(rows):
                    conn.execute(text("SELECT name, body FROM t WHERE id = :i"),
                                 {"i": (i * 7919) % rows}).one()
            t2 = time.perf_counter()
        finally:
            engine.dispose()
        assert store.is_encrypted_database(data / "dictation.db") == encrypted
        out[f"db_{label}_insert_s"] = round(t1 - t0, 3)
        out[f"db_{label}_select_s"] = round(t2 - t1, 3)
    for op in ("insert", "select"):
        out[f"db_{op}_ratio"] = round(out[f"db_sqlcipher_{op}_s"] / out[f"db_plain_{op}_s"], 2)
    return out


def _one_dictation(audio: Path, settings: Any) -> float:
    """Seconds for one dictation through the inbox and the pipeline, as the service runs it."""
    import shutil

    from pipeline.core.store import open_store
    from pipeline.ingest import inbox
    from pipeline.service.process import process_file

    inbox.ensure_layout(settings)
    physician = settings.physicians[0]
    folder = settings.inbox_dir / physician
    dropped = folder / ("bench" + audio.suffix)
    shutil.copy(audio, dropped)
    dropped.with_suffix(".json").write_text(json.dumps(
        {"patient_name": "Bench Patient", "mrn": "BENCH-1", "document_type": "progress_note"}),
        encoding="utf-8")
    t0 = time.perf_counter()  # from the claim on: the copy above is the recorder's work
    result = inbox.InboxScanner(settings).take(dropped)
    if result.outcome != "received" or result.dictation_id is None:
        raise SystemExit(f"bench dictation not taken in: {result.outcome} {result.reason}")
    claimed = inbox.claimed_audio(settings.processing_dir / result.dictation_id)
    assert claimed is not None
    meta = inbox.load_meta(claimed, physician, settings)
    process_file(claimed, settings, meta)
    inbox.archive(settings, result.dictation_id)
    seconds = time.perf_counter() - t0
    open_store(settings).engine.dispose()
    return seconds


class _Clock:
    """Seconds spent inside the wrapped functions (the encryption layer's entry points)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def wrap(self, module: Any, name: str) -> None:
        inner = getattr(module, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1

        setattr(module, name, timed)


def measure_end_to_end(audio: Path, settings: Any, folder: Path, repeat: int,
                       pdf: str = "auto") -> dict[str, Any]:
    """Median end-to-end seconds of one dictation with encryption off and on (alternating),
    and, for the encrypted runs, the seconds spent inside the encryption layer (sealing the
    audio and sidecar, decrypting for every read, opening SQLCipher connections): a figure
    that the machine's load does not swamp the way the difference of two medians can."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from pipeline.core import crypto, files, store

    key = base64.b64encode(crypto.generate_key()).decode()
    runs: dict[bool, list[float]] = {False: [], True: []}
    inside: list[float] = []
    statements: list[int] = []
    count = [0]

    def _count(*_args: Any) -> None:
        count[0] += 1

    # SQL statements per dictation: with the micro-benchmark's per-statement cost, what
    # SQLCipher's page encryption adds to a dictation (not inside the wrapped functions)
    event.listen(Engine, "before_cursor_execute", _count)
    clock = _Clock()
    for module, name in ((files, "plain_reader"), (files, "seal"), (crypto, "decrypt_bytes"),
                         (store, "connect_encrypted"), (files, "write_bytes"),
                         (files, "read_bytes")):
        clock.wrap(module, name)
    n = 0

    def once(on: bool) -> float:
        nonlocal n
        n += 1
        s = settings.model_copy(update={"data_dir": folder / f"e2e-{n}", "data_key": key,
                                        "encrypt_files": on, "encrypt_database": on,
                                        "pdf": pdf})
        clock.seconds = 0.0
        count[0] = 0
        seconds = _one_dictation(audio, s)
        if on:
            inside.append(clock.seconds)
            statements.append(count[0])
        return seconds

    once(True)  # warm-up: model and language stages loaded, as in a running worker
    inside.clear()
    statements.clear()
    for _ in range(repeat):
        for on in (False, True):
            runs[on].append(once(on))
    plain_s, enc_s = statistics.median(runs[False]), statistics.median(runs[True])
    layer_s = statistics.median(inside)
    event.remove(Engine, "before_cursor_execute", _count)
    return {"e2e_runs": repeat, "e2e_plain_s": round(plain_s, 3),
            "e2e_encrypted_s": round(enc_s, 3),
            "e2e_overhead_percent": round(100 * (enc_s - plain_s) / plain_s, 2),
            "e2e_layer_s": round(layer_s, 4),
            "e2e_layer_percent": round(100 * layer_s / enc_s, 3),
            "e2e_sql_statements": int(statistics.median(statements)),
            "e2e_pdf": pdf,
            "e2e_plain_all_s": [round(x, 3) for x in runs[False]],
            "e2e_encrypted_all_s": [round(x, 3) for x in runs[True]]}


def _micros(fn: Any, number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return round((time.perf_counter() - t0) / number * 1e6, 2)


def measure_columns(rows: int, pg_url: str | None = None) -> dict[str, Any]:
    """Column encryption: per-value cost, the Python name search over ``rows`` sealed
    names, and (``pg_url``) the worklist on a real PostgreSQL, sealed against plain."""
    from pipeline.core import crypto
    from pipeline.core.db import encrypted

    ring = crypto.KeyRing(crypto.generate_key(), source="memory")
    cipher = encrypted.ColumnCipher(lambda: ring)
    name, mrn = "Jane Q. Public", "A1234567"
    body = ("The patient was seen today for follow-up of hypertension. " * 52)[:3000]
    sealed_name, sealed_body = cipher.seal(name), cipher.seal(body)
    out: dict[str, Any] = {
        "col_rows": rows,
        "col_seal_name_us": _micros(lambda: cipher.seal(name), 2000),
        "col_open_name_us": _micros(lambda: cipher.open(sealed_name), 2000),
        "col_seal_mrn_deterministic_us": _micros(
            lambda: cipher.seal(mrn, deterministic=True), 2000),
        "col_seal_3kb_us": _micros(lambda: cipher.seal(body), 500),
        "col_open_3kb_us": _micros(lambda: cipher.open(sealed_body), 500),
        "col_name_bytes": len(name), "col_sealed_name_chars": len(sealed_name),
        "col_mrn_bytes": len(mrn),
        "col_sealed_mrn_chars": len(cipher.seal(mrn, deterministic=True)),
    }
    names = [cipher.seal(f"Patient{i:05d} Surname{i % 97}") for i in range(rows)]
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        hits = [i for i, v in enumerate(names) if "surname42" in cipher.open(v).lower()]
        runs.append(time.perf_counter() - t0)
    out["col_python_search_ms"] = round(1000 * statistics.median(runs), 2)
    out["col_python_search_hits"] = len(hits)
    if pg_url:
        out.update(_measure_pg_columns(rows, pg_url))
    return out


def _measure_pg_columns(rows: int, pg_url: str) -> dict[str, Any]:
    """The worklist on PostgreSQL with ``rows`` drafts, encrypt_columns off and on."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from pipeline.core import crypto, store
    from pipeline.core.db.core import DictationRow, DraftRow
    from pipeline.core.settings import Settings
    from pipeline.review.users import UserInfo
    from pipeline.web.routes.worklist import worklist_rows

    key = base64.b64encode(crypto.generate_key()).decode()
    admin_url = make_url(pg_url)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    reviewer = UserInfo(0, "bench", "admin")
    out: dict[str, Any] = {"col_pg_rows": rows}

    def median_ms(fn: Any, n: int) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return round(1000 * statistics.median(times), 2)

    try:
        for label, on in (("plain", False), ("sealed", True)):
            name = f"bench_columns_{label}_{uuid.uuid4().hex[:8]}"
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            url = admin_url.set(database=name).render_as_string(hide_password=False)
            with tempfile.TemporaryDirectory(prefix="bench-columns-") as tmp:
                settings = Settings(data_dir=Path(tmp), database_url=url, data_key=key,
                                    encrypt_columns=on, physicians=["dr-bench"])
                st = store.open_store(settings)
                t0 = time.perf_counter()
                for start in range(0, rows, 1000):
                    with st.session() as s:
                        for i in range(start, min(rows, start + 1000)):
                            did = f"{i:032x}"
                            s.add(DictationRow(id=did, sha256=did * 2, physician_id="dr-bench",
                                               original_name=f"Surname{i % 97}_{i}.wav",
                                               meta={"mrn": f"M{i:07d}"}))
                            s.add(DraftRow(id=did, dictation_id=did, physician_id="dr-bench",
                                           document_type="progress_note", audio_sha256=did * 2,
                                           text="The patient was seen today. " * 100,
                                           patient_name=f"Patient{i:05d} Surname{i % 97}",
                                           mrn=f"M{i:07d}", document={"sections": []}))
                out[f"col_pg_{label}_insert_s"] = round(time.perf_counter() - t0, 2)

                def search(q: str, status: str = "all", st: Any = st) -> int:
                    with st.session() as s:
                        return len(worklist_rows(s, reviewer, status=status, q=q)[0])

                assert search(f"M{rows // 2:07d}") == 1
                out[f"col_pg_{label}_mrn_lookup_ms"] = median_ms(
                    lambda: search(f"M{rows // 2:07d}"), 20)
                out[f"col_pg_{label}_name_search_ms"] = median_ms(
                    lambda: search("surname42"), 5)
                out[f"col_pg_{label}_page_ms"] = median_ms(lambda: search("", "open"), 20)
                st.engine.dispose()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE "{name}"'))
    finally:
        admin.dispose()
    return out


def _default_audio(settings: Any) -> Path:
    folder = settings.samples_dir / "synthetic_medical"
    found = sorted(p for p in folder.glob("*") if p.suffix in (".ogg", ".wav", ".mp3", ".flac"))
    if not found:
        raise SystemExit("no sample audio found; give AUDIO")
    return found[0]


def run(args: argparse.Namespace) -> int:
    """Run the measurement and print the figures side by side (or JSON)."""
    settings = settings_from_args(args)
    audio = args.audio or _default_audio(settings)
    figures = measure(audio, settings, repeat=args.repeat, e2e=not args.no_e2e)
    with tempfile.TemporaryDirectory(prefix="bench-crypto-") as tmp:
        if args.db_rows:
            figures.update(measure_database(args.db_rows, Path(tmp)))
        if not args.no_e2e and args.repeat_e2e:
            figures.update(measure_end_to_end(audio, settings, Path(tmp), args.repeat_e2e,
                                              pdf=args.e2e_pdf))
    if args.column_rows:
        figures.update(measure_columns(args.column_rows, args.pg_url))
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"10 MB audio: encrypt {figures['encrypt_mb_s']} MB/s "
          f"({figures['ten_mb_encrypt_s']} s), decrypt {figures['decrypt_mb_s']} MB/s "
          f"({figures['ten_mb_decrypt_s']} s)")
    if "end_to_end_s" in figures:
        print(f"one dictation ({figures['dictation_audio_s']} s of audio, model "
              f"{figures['model']}): end to end {figures['end_to_end_s']} s | crypto "
              f"{figures['dictation_crypto_s']} s = {figures['overhead_percent']} % "
              f"(target <= {TARGET_PERCENT:g} %)")
        print(f"10 MB round trip vs that end-to-end time: "
              f"{figures['ten_mb_vs_end_to_end_percent']} %")
    if "db_rows" in figures:
        n = figures["db_rows"]
        print(f"database, {n} insert transactions: plain {figures['db_plain_insert_s']} s | "
              f"SQLCipher {figures['db_sqlcipher_insert_s']} s "
              f"(x{figures['db_insert_ratio']})")
        print(f"database, {n} selects by key:      plain {figures['db_plain_select_s']} s | "
              f"SQLCipher {figures['db_sqlcipher_select_s']} s "
              f"(x{figures['db_select_ratio']})")
    if "col_rows" in figures:
        print(f"database columns (PostgreSQL): seal a {figures['col_name_bytes']}-byte name "
              f"{figures['col_seal_name_us']} us (-> {figures['col_sealed_name_chars']} chars), "
              f"open {figures['col_open_name_us']} us; an MRN, deterministic "
              f"{figures['col_seal_mrn_deterministic_us']} us (-> "
              f"{figures['col_sealed_mrn_chars']} chars); 3 KB text seal "
              f"{figures['col_seal_3kb_us']} us, open {figures['col_open_3kb_us']} us")
        print(f"  name search in Python over {figures['col_rows']} sealed names: "
              f"{figures['col_python_search_ms']} ms")
    if "col_pg_rows" in figures:
        for what, label in (("insert_s", "insert (s)"), ("mrn_lookup_ms", "MRN lookup (ms)"),
                            ("name_search_ms", "name search (ms)"),
                            ("page_ms", "worklist page (ms)")):
            print(f"  PostgreSQL, {figures['col_pg_rows']} drafts, {label}: plain "
                  f"{figures[f'col_pg_plain_{what}']} | sealed "
                  f"{figures[f'col_pg_sealed_{what}']}")
    if "e2e_plain_s" in figures:
        print(f"one dictation through inbox + pipeline, pdf={figures['e2e_pdf']} "
              f"(median of {figures['e2e_runs']}): "
              f"encryption off {figures['e2e_plain_s']} s | on {figures['e2e_encrypted_s']} s "
              f"= {figures['e2e_overhead_percent']:+} % (target <= {TARGET_PERCENT:g} %)")
        print(f"  of which inside the encryption layer (seal, decrypt on read, draft files "
              f"written and read, SQLCipher connect): {figures['e2e_layer_s']} s = "
              f"{figures['e2e_layer_percent']} %; "
              f"all runs off {figures['e2e_plain_all_s']} on {figures['e2e_encrypted_all_s']}")
        if "db_rows" in figures:
            n, sql = figures["db_rows"], figures["e2e_sql_statements"]
            per = max(figures[f"db_sqlcipher_{op}_s"] - figures[f"db_plain_{op}_s"]
                      for op in ("insert", "select")) / n
            print(f"  SQL statements per dictation: {sql}; at the slower micro-benchmark's "
                  f"extra cost per statement that is {sql * per:.4f} s = "
                  f"{100 * sql * per / figures['e2e_encrypted_s']:.3f} %")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``bench-crypto`` sub-command."""
    p = subparsers.add_parser(
        "bench-crypto", help="encryption at rest: MB/s and cost per dictation, side by side",
        description="AES-256-GCM throughput on a 10 MB audio file and the crypto work of one "
        "dictation against its end-to-end time (temporary data directory, in-memory key).",
    )
    p.add_argument("audio", nargs="?", type=Path, metavar="AUDIO",
                   help="a dictation (default: the first samples/synthetic_medical file)")
    p.add_argument("--model", help="registry name or CTranslate2 folder (default: settings)")
    p.add_argument("--repeat", type=int, default=5, help="crypto rounds (median reported)")
    p.add_argument("--no-e2e", action="store_true", help="throughput only, no pipeline run")
    p.add_argument("--db-rows", type=int, default=2000,
                   help="database rows inserted and selected, plain vs SQLCipher (0: skip)")
    p.add_argument("--repeat-e2e", type=int, default=3,
                   help="end-to-end runs with encryption off and on, each (0: skip)")
    p.add_argument("--e2e-pdf", choices=("auto", "never"), default="auto",
                   help="PDF stage in the end-to-end runs (auto: when LibreOffice is installed)")
    p.add_argument("--column-rows", type=int, default=10000,
                   help="sealed patient names searched in Python, and drafts with --pg-url "
                   "(0: skip the column figures)")
    p.add_argument("--pg-url", help="PostgreSQL URL whose user may create databases: the "
                   "worklist with encrypt_columns off and on, on two throwaway databases")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run)
