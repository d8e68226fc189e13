#!/usr/bin/env bash
# Side-by-side benchmarks: vlmadapt bench and the Python yardstick (../shared/bench/perf_py.py,
# Debian's python3-torch) on the same tasks, run alternately, one JSON line each; then the
# vlmadapt-only measurements (1000-class TPT memory, the cached-feature epoch).
# Usage: scripts/bench.sh [OUT.jsonl]      (THREADS=2 REPS=3 TPT_REPS=3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench.jsonl}
THREADS=${THREADS:-2}
REPS=${REPS:-3}
TPT_REPS=${TPT_REPS:-3}
PY=${PY:-/usr/bin/python3}
YARDSTICK=${YARDSTICK:-../shared/bench/perf_py.py}
VLM=build/bin/vlmadapt
: > "$OUT"
record() { echo "{\"side\": \"$1\", \"result\": $2}" | tee -a "$OUT"; }
pair() {  # reps, then the task and options, the same for both sides
  local reps=$1; shift
  record python "$($PY "$YARDSTICK" "$@" --threads "$THREADS" --reps "$reps")"
  record vlmadapt "$($VLM bench "$@" --threads "$THREADS" --reps "$reps")"
}
pair "$REPS" encode --arch ViT-B/32 --batch 32
pair "$REPS" encode --arch ViT-B/16 --batch 32
pair "$REPS" coop --arch ViT-B/16 --n-cls 100 --batch 32
pair "$TPT_REPS" tpt --arch ViT-B/16 --n-cls 100
pair "$TPT_REPS" tpt --arch ViT-B/16 --n-cls 200
# Python needs more than this machine's 24 GB here; vlmadapt's peak memory is the point.
record vlmadapt "$($VLM bench tpt --arch ViT-B/16 --n-cls 1000 --threads "$THREADS" --reps 1)"
# One CoOp epoch online (decoding, augmentation, image tower) and from cached features.
record vlmadapt "$($VLM bench epoch --arch ViT-B/16 --feature-views 1 --threads "$THREADS" 2>/dev/null)"
