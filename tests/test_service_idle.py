"""What the idle supervisor does: the status is drawn only when the counts change."""

from __future__ import annotations

import io

from pipeline.core.settings import Settings
from pipeline.ingest import inbox
from pipeline.service.status import StatusView


def test_status_line_is_printed_only_when_counts_change(settings: Settings) -> None:
    """An idle service prints nothing new; a file arriving in the inbox changes the line."""
    inbox.ensure_layout(settings)
    out = io.StringIO()
    with StatusView(settings).live(enabled=True, out=out) as update:  # not a TTY: lines
        assert update() is True
        assert update() is False
        assert update() is False
        (settings.inbox_dir / "dr-smith" / "a.wav").write_bytes(b"RIFF")
        assert update() is True
        assert update() is False
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("waiting in inbox 0 |")
    assert lines[1].startswith("waiting in inbox 1 |")
