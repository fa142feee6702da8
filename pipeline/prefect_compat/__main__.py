"""``python -m pipeline.prefect_compat``: each patch's status against the installed libraries
and the installed fingerprints of what it relies on (to record after an upgrade). Exits 1 if
a patch no longer applies."""

from __future__ import annotations

import sys

from pipeline.core.errors import PrefectCompatError
from pipeline.prefect_compat import PATCHES
from pipeline.prefect_compat._source import installed_source, version_drift


def main() -> int:
    """Print one block per patch; return 1 if any check failed."""
    failed = 0
    for name, patch in PATCHES.items():
        try:
            patch.check()
            status = "ok"
        except PrefectCompatError as exc:
            status = f"NO LONGER APPLIES: {exc}"
            failed += 1
        drift = version_drift(patch.WRITTEN_FOR)
        print(f"{name}: {status}")
        print(f"  replaces {patch.TARGET}")
        print(f"  written for {patch.WRITTEN_FOR}" + (f" (installed: {drift})" if drift else ""))
        for (module, qualname), recorded in patch.FINGERPRINTS.items():
            src = installed_source(module)
            node = src.find(qualname) if src is not None else None
            now = src.fingerprint(node) if src is not None and node is not None else "gone"
            mark = "" if now == recorded else f" (recorded {recorded})"
            print(f"  fingerprint {module}.{qualname} = {now}{mark}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
