#!/usr/bin/env bash
# Side-by-side benchmarks: vlmadapt bench and the Python yardstick (../shared/bench/perf_py.py,
# Debian's python3-torch) on the same tasks, run alternately, one JSON line each.
# Usage: scripts/bench.sh [OUT.jsonl]      (THREADS=2 REPS=3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench.jsonl}
THREADS=${THREADS:-2}
REPS=${REPS:-3}
PY=${PY:-/usr/bin/python3}
YARDSTICK=${YARDSTICK:-../shared/bench/perf_py.py}
: > "$OUT"
pair() {  # task and options, the same for both sides
  for side in python vlmadapt; do
    if [ $side = python ]; then line=$($PY "$YARDSTICK" "$@" --threads "$THREADS" --reps "$REPS")
    else line=$(build/bin/vlmadapt bench "$@" --threads "$THREADS" --reps "$REPS"); fi
    echo "{\"side\": \"$side\", \"result\": $line}" | tee -a "$OUT"
  done
}
pair encode --arch ViT-B/32 --batch 32
pair encode --arch ViT-B/16 --batch 32
pair coop --arch ViT-B/16 --n-cls 100 --batch 32
pair tpt --arch ViT-B/16 --n-cls 100
pair tpt --arch ViT-B/16 --n-cls 200
