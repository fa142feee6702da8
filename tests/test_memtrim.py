"""``memtrim``: freed heap pages go back to the operating system (glibc)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest

from pipeline.core import memtrim
from pipeline.core.settings import PROJECT_ROOT

pytestmark = pytest.mark.skipif(not memtrim.available(), reason="needs glibc malloc_trim")


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter with glibc's malloc at its defaults: tunables and
    ``MALLOC_*`` variables (arena count, trim threshold, mmap threshold) change when freed
    pages go back on their own, so the figures below would depend on the caller's shell."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD"))}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=120, check=True, env=env)
    return out.stdout


@pytest.mark.parametrize("trimmed", [True, False])
def test_freed_thread_arena_memory_returns_to_the_system(trimmed: bool) -> None:
    """A thread allocates ~256 MB in 64 kB blocks and frees all but every 50th (as a
    finished dictation leaves its arrays behind): glibc keeps the freed pages in the
    thread's arena until ``trim``; after it the resident size falls by most of them.

    Certain rather than lucky: the pages were written (resident, ~251 MB freed),
    ``malloc_trim`` returns the free ones with ``MADV_DONTNEED`` (dropped from the resident
    set at once; ``trim()`` says True), and with glibc's defaults a free in a thread arena
    gives back only the top of its heap (the kept blocks pin the rest), so without ``trim``
    the two readings, taken back to back, stay within a few MB."""
    out = _python(f"""
        import threading, psutil, numpy as np
        from pipeline.core import memtrim
        keep = []
        def work():
            blocks = [np.ones(8000) for _ in range(4000)]
            keep.extend(blocks[::50])
        t = threading.Thread(target=work); t.start(); t.join()
        p = psutil.Process()
        before = p.memory_info().rss
        released = memtrim.trim() if {trimmed} else None
        print(before, p.memory_info().rss, released)
    """)
    first, second, released = out.split()
    before, after = int(first), int(second)
    assert before > 200e6
    if trimmed:
        assert released == "True"
        assert before - after > 150e6, (before, after)
    else:
        assert before - after < 20e6, (before, after)


def test_trimmer_thread_runs_until_stopped() -> None:
    stop = threading.Event()
    thread = memtrim.start_trimmer(0.01, stop)
    assert thread is not None and thread.daemon and thread.is_alive()
    stop.set()
    thread.join(2)
    assert not thread.is_alive()
