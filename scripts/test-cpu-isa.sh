#!/usr/bin/env bash
# Run the tests once per CPU instruction set that CTranslate2 may pick on another machine.
#
# Why: the words tiny.en decodes from a hard stretch of audio depend on which matrix kernels
# run (CTranslate2's ISA, Intel MKL or oneDNN, their own dispatch): see
# docs/decoding-determinism.md. A test that passes on one ISA only asserts decoding luck.
# Each run exports CT2_FORCE_CPU_ISA and the matching ONEDNN_MAX_CPU_ISA (oneDNN's cap, for
# when CTranslate2 uses oneDNN instead of MKL):
#   GENERIC -> SSE41, AVX2 -> AVX2, AVX512 -> AVX512_CORE
#
# Usage: scripts/test-cpu-isa.sh [PYTEST ARGS...]     (default: the whole suite)
#   scripts/test-cpu-isa.sh tests/test_transcribe.py -k loop
#   ISAS="AVX2 AVX512" scripts/test-cpu-isa.sh tests/test_speech_models.py
# Prints pytest's own output per ISA, then one summary line per ISA; exits non-zero when any
# ISA failed. Forcing an ISA the CPU lacks is not something CTranslate2 guards against: run
# AVX512 only on a CPU with AVX-512 (`grep -o avx512f /proc/cpuinfo`).
set -euo pipefail
cd "$(dirname "$0")/.."

pytest=${PYTEST:-.venv/bin/pytest}
[[ -x $pytest ]] || pytest=pytest
read -r -a isas <<< "${ISAS:-GENERIC AVX2 AVX512}"
args=("$@")
[[ ${#args[@]} -gt 0 ]] || args=(tests)

onednn_isa() {
  case "$1" in
    GENERIC) echo SSE41 ;;
    AVX) echo AVX ;;
    AVX2) echo AVX2 ;;
    AVX512) echo AVX512_CORE ;;
    *) echo "unknown ISA: $1 (GENERIC, AVX, AVX2 or AVX512)" >&2; return 2 ;;
  esac
}

summary=()
status=0
for isa in "${isas[@]}"; do
  onednn=$(onednn_isa "$isa")
  log=$(mktemp)
  echo "=== CT2_FORCE_CPU_ISA=$isa ONEDNN_MAX_CPU_ISA=$onednn: pytest ${args[*]}"
  start=$SECONDS
  rc=0
  CT2_FORCE_CPU_ISA=$isa ONEDNN_MAX_CPU_ISA=$onednn "$pytest" "${args[@]}" 2>&1 \
    | tee "$log" || rc=${PIPESTATUS[0]}
  # pytest's last line: "=== 3 failed, 40 passed in 81.2s ===" (or -q: "40 passed in 81.2s")
  result=$(grep -E '(passed|failed|error|no tests ran|skipped|deselected)' "$log" | tail -n 1 \
    | sed -E 's/^=+ //; s/ =+$//')
  rm -f "$log"
  summary+=("$(printf '%-8s rc=%-3s %4ss  %s' "$isa" "$rc" "$((SECONDS - start))" "$result")")
  [[ $rc -eq 0 ]] || status=1
done

echo
echo "=== summary (CT2_FORCE_CPU_ISA)"
printf '%s\n' "${summary[@]}"
exit "$status"
