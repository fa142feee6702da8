"""Process-wide switches that keep every library offline and quiet.

Imported first by :mod:`pipeline` so that the variables are set before onnxruntime,
Hugging Face or Prefect are imported anywhere in the process (onnxruntime reads its
telemetry switch at import time and otherwise makes DNS look-ups ~9 s later).
"""

from __future__ import annotations

import os

OFFLINE_ENV: dict[str, str] = {
    "ORT_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",
}


def apply() -> None:
    """Set the offline/no-telemetry variables unless the user already chose a value."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    # These two must never be overridden: they are privacy guarantees, not preferences.
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    os.environ["DO_NOT_TRACK"] = "1"


apply()
