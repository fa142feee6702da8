"""Render the synthetic dictations in ``samples/`` from their scripts, reproducibly.

Each synthetic sample is a spoken script (``<id>.ref.txt``, or ``<id>.script.txt`` when it
holds ``[pause N]`` lines for silence gaps) and one row of the set's ``manifest.csv`` naming
the text-to-speech ``engine`` (``espeak-ng`` or ``flite``), the ``voice`` and the ``rate``
(words per minute for espeak-ng, a duration stretch factor for flite). Rendering:

    script -> TTS per text chunk -> 16 kHz mono 16-bit WAV (sox -R: repeatable dither)
           -> silence gaps (sox)
           -> concatenated -> FLAC (sox) or OGG/Opus 24 kbit/s (ffmpeg, bit-exact flags)

and the row's ``duration_s`` is rewritten from the result. espeak-ng, flite, sox and ffmpeg
are Debian packages (``apt-get install espeak-ng flite sox ffmpeg``).
"""

from __future__ import annotations

import csv
import logging
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import ConfigError

__all__ = [
    "MANIFEST_COLUMNS",
    "SAMPLE_RATE",
    "ScriptChunk",
    "parse_script",
    "script_text",
    "read_manifest",
    "write_manifest",
    "render_audio",
    "build_set",
    "audio_duration",
]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000

#: Column order of every ``manifest.csv`` under ``samples/`` (extra columns: rate, purpose, tasks).
MANIFEST_COLUMNS = [
    "id",
    "audio",
    "reference",
    "expected",
    "terms",
    "sidecar",
    "document_type",
    "voice",
    "engine",
    "duration_s",
    "licence",
    "source",
    "rate",
    "purpose",
    "tasks",
]

TTS_ENGINES = ("espeak-ng", "flite")

_PAUSE = re.compile(r"^\[pause\s+(\d+(?:\.\d+)?)\]$")


@dataclass(frozen=True)
class ScriptChunk:
    """Either spoken text or a pause of ``pause_s`` seconds."""

    text: str = ""
    pause_s: float = 0.0


def parse_script(script: str) -> list[ScriptChunk]:
    """Split a script into text chunks and ``[pause N]`` silences (one marker per line)."""
    chunks: list[ScriptChunk] = []
    lines: list[str] = []
    for raw in script.splitlines():
        line = raw.strip()
        match = _PAUSE.match(line)
        if match:
            if lines:
                chunks.append(ScriptChunk(text="\n".join(lines)))
                lines = []
            chunks.append(ScriptChunk(pause_s=float(match.group(1))))
        elif line:
            lines.append(line)
    if lines:
        chunks.append(ScriptChunk(text="\n".join(lines)))
    return chunks


def script_text(script: str) -> str:
    """The words a script speaks: the script without its pause lines (= the reference)."""
    return "\n".join(c.text for c in parse_script(script) if c.text) + "\n"


def read_manifest(path: Path) -> list[dict[str, str]]:
    """Read a ``manifest.csv`` into a list of row dicts (all values strings)."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return [dict(row) for row in csv.DictReader(fh)]


def write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    """Write manifest rows with the standard column order (extra keys are kept at the end)."""
    columns = list(MANIFEST_COLUMNS)
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})


def _need(tool: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise ConfigError(
            f"The tool {tool!r} is not installed; rendering samples needs espeak-ng, flite, "
            "sox and ffmpeg (apt-get install espeak-ng flite sox ffmpeg)."
        )
    return found


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ConfigError(
            f"Command {Path(cmd[0]).name} failed with status {proc.returncode}: "
            f"{proc.stderr.strip()[:300]}"
        )


def _tts(text: str, engine: str, voice: str, rate: str, out_wav: Path) -> None:
    """Speak ``text`` into ``out_wav`` with espeak-ng or flite."""
    text_file = out_wav.with_suffix(".txt")
    text_file.write_text(text, encoding="utf-8")
    if engine == "espeak-ng":
        cmd = [_need("espeak-ng"), "-v", voice]
        if rate:
            cmd += ["-s", str(int(float(rate)))]
        cmd += ["-w", str(out_wav), "-f", str(text_file)]
    elif engine == "flite":
        cmd = [_need("flite"), "-voice", voice]
        if rate:
            cmd += ["--setf", f"duration_stretch={float(rate)}"]
        cmd += ["-f", str(text_file), "-o", str(out_wav)]
    else:
        raise ConfigError(
            f"Unknown TTS engine {engine!r}; expected one of {', '.join(TTS_ENGINES)}."
        )
    _run(cmd)


def render_audio(
    script: str, engine: str, voice: str, rate: str, out_path: Path, *, opus_bitrate: str = "24k"
) -> float:
    """Render a script to ``out_path`` (.flac or .ogg), 16 kHz mono; return its duration (s)."""
    sox = _need("sox")
    suffix = out_path.suffix.lower()
    if suffix not in (".flac", ".ogg"):
        raise ConfigError(f"Sample audio {out_path.name} must end in .flac or .ogg.")
    with tempfile.TemporaryDirectory(prefix="samplegen-") as tmp_name:
        tmp = Path(tmp_name)
        parts: list[Path] = []
        for i, chunk in enumerate(parse_script(script)):
            part = tmp / f"part{i:03d}.wav"
            if chunk.text:
                spoken = tmp / f"tts{i:03d}.wav"
                _tts(chunk.text, engine, voice, rate, spoken)
                _run([sox, "-R", str(spoken), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16",
                      str(part)])
            else:
                _run([sox, "-R", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(part),
                      "trim", "0", f"{chunk.pause_s:.3f}"])
            parts.append(part)
        if not parts:
            raise ConfigError(f"The script for {out_path.name} has no text to speak.")
        joined = tmp / "joined.wav"
        if len(parts) == 1:
            shutil.copyfile(parts[0], joined)
        else:
            _run([sox, "-R", *map(str, parts), str(joined)])
        out_path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".flac":
            _run([sox, "-R", str(joined), "-C", "8", str(out_path)])
        else:
            _run([_need("ffmpeg"), "-loglevel", "error", "-y", "-i", str(joined),
                  "-c:a", "libopus", "-b:a", opus_bitrate, "-application", "voip",
                  "-fflags", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1",
                  str(out_path)])
        return audio_duration(joined)


def audio_duration(path: Path) -> float:
    """Duration of an audio file in seconds (via soxi for WAV/FLAC, PyAV otherwise)."""
    if Path(path).suffix.lower() in (".wav", ".flac"):
        proc = subprocess.run([_need("soxi"), "-D", str(path)], capture_output=True, text=True,
                              check=False)
        if proc.returncode == 0:
            return float(proc.stdout.strip())
    import av

    with av.open(str(path)) as container:
        if container.duration is None:
            raise ConfigError(f"Cannot read the duration of {Path(path).name}.")
        return float(container.duration) / 1_000_000


def build_set(set_dir: Path, only: list[str] | None = None) -> list[dict[str, str]]:
    """Re-render every TTS row of ``set_dir/manifest.csv`` and rewrite its durations.

    Rows whose engine is not a TTS engine (recorded speech) are left untouched. Returns the
    rows that were rendered.
    """
    set_dir = Path(set_dir)
    manifest = set_dir / "manifest.csv"
    if not manifest.is_file():
        raise ConfigError(f"No manifest.csv in {set_dir}; expected a sample set folder.")
    rows = read_manifest(manifest)
    rendered: list[dict[str, str]] = []
    for row in rows:
        if row.get("engine") not in TTS_ENGINES:
            continue
        if only and row["id"] not in only:
            continue
        script_file = set_dir / f"{row['id']}.script.txt"
        if not script_file.is_file():
            script_file = set_dir / row["reference"]
        script = script_file.read_text(encoding="utf-8")
        duration = render_audio(
            script, row["engine"], row["voice"], row.get("rate", ""), set_dir / row["audio"]
        )
        row["duration_s"] = f"{duration:.2f}"
        rendered.append(row)
        log.info("rendered sample=%s engine=%s voice=%s duration_s=%.1f",
                 row["id"], row["engine"], row["voice"], duration)
    write_manifest(manifest, rows)
    return rendered
