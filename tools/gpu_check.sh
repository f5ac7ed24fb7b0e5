#!/usr/bin/env bash
# One command for the day a GPU is lent: every CUDA test, then the benchmarks, with the
# numbers appended to docs/benchmarks.md (machine, date, commit, command).
#
#   tools/gpu_check.sh            # tests (-m cuda) + bench.py on the fullscale rig (10 frames)
#   QUICK=1 tools/gpu_check.sh    # tests + bench.py --quick (minutes, not tens of minutes)
#
# It stops at the first failing step (set -e) and says which; what the tests print is kept
# in bench/gpu_check/pytest.log. PYTHON defaults to .venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=bench/gpu_check
DOC=docs/benchmarks.md
mkdir -p "$OUT"
export HANDNERF_CACHE=${HANDNERF_CACHE:-/tmp/handnerf_cache}

"$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: nothing to check")'

step() { echo "== gpu_check: $*" >&2; }

step "pytest -m cuda"
# -rs lists every skip with its reason (tinycudann missing, say); a failure stops here.
"$PYTHON" -m pytest -m cuda -q -rs -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest.log"
tests_summary=$(tail -n 1 "$OUT/pytest.log")

if [ "${QUICK:-0}" = 1 ]; then
  bench_args=(--device cuda --quick)
else
  bench_args=(--device cuda --preset fullscale --frames 10 --minutes 3)
fi
step "tools/bench.py ${bench_args[*]}"
"$PYTHON" tools/bench.py "${bench_args[@]}" --out "$OUT/bench.json"
step "tools/bench_early_stop.py --device cuda"
"$PYTHON" tools/bench_early_stop.py --device cuda --steps 300 --out "$OUT/early_stop.json"

step "appending to $DOC"
{
  echo
  echo "### GPU check ($(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD))"
  echo
  echo "Machine: $("$PYTHON" -c 'import json; from handnerf.files import machine_info; print(json.dumps(machine_info()))')"
  echo
  echo '```bash'
  echo "tools/gpu_check.sh   # QUICK=${QUICK:-0}"
  echo '```'
  echo
  echo "pytest -m cuda: $tests_summary"
  echo
  cat "$OUT/bench.md"
  echo
  echo "Early ray termination (tools/bench_early_stop.py --device cuda):"
  echo
  echo '```json'
  cat "$OUT/early_stop.json"
  echo '```'
} >> "$DOC"
step "done: numbers appended to $DOC (raw files in $OUT)"
