"""``memtrim``: freed heap pages go back to the operating system (glibc)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from pipeline.core import memtrim
from pipeline.core.settings import PROJECT_ROOT

pytestmark = pytest.mark.skipif(not memtrim.available(), reason="needs glibc malloc_trim")


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


@pytest.mark.parametrize("trimmed", [True, False])
def test_freed_thread_arena_memory_returns_to_the_system(trimmed: bool) -> None:
    """A thread allocates ~256 MB in 64 kB blocks and frees all but every 50th (as a
    finished dictation leaves its arrays behind): glibc keeps the freed pages in the
    thread's arena until ``trim``; after it the resident size falls by most of them."""
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
        if {trimmed}:
            memtrim.trim()
        print(before, p.memory_info().rss)
    """)
    before, after = (int(x) for x in out.split())
    assert before > 200e6
    if trimmed:
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
