"""``dictation bench-crypto [AUDIO]``: what encryption at rest costs, measured in one run.

Side by side: encrypt + decrypt throughput (MB/s) on a 10 MB audio file (AUDIO's bytes
repeated, or a generated file), and for one real dictation (AUDIO, default the first sample
in ``samples/synthetic_medical``) the crypto work it would cause (audio encrypted once when
claimed and decrypted once to transcribe; every output written encrypted) against its
end-to-end pipeline time with a warm model. Nothing touches the real data directory or key
file: a temporary data directory and an in-memory key are used.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run)
