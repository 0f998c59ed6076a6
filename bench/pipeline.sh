#!/usr/bin/env bash
# Times the pipeline part of `make run` (installation excluded): a cold run from a clean output
# state, then a second unchanged run that should re-use every stage. Prints the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
make install >/dev/null
make clean-outputs >/dev/null
rm -rf models/base data/raw .dvc/cache dvc.lock
start=$(date +%s.%N); .venv/bin/medlora run >/tmp/medlora-bench-cold.log 2>&1; cold=$(echo "$(date +%s.%N) - $start" | bc)
start=$(date +%s.%N); .venv/bin/medlora run >/tmp/medlora-bench-warm.log 2>&1; warm=$(echo "$(date +%s.%N) - $start" | bc)
printf 'cold run: %.0f s\nunchanged second run: %.0f s\nratio: %.3f\n' "$cold" "$warm" "$(echo "$warm / $cold" | bc -l)"
tail -n 14 /tmp/medlora-bench-cold.log
