#!/usr/bin/env bash
# The test-time methods' cost per image and peak memory (vlmadapt bench tta) on ViT-B/16
# with 1000 classes, each in its own process (so that peak_rss_mb is its own), one JSON
# line each: TDA and DMN against zero-shot on the same views (1 and 32), ZERO against TPT
# on the same 64 views, and every other new method's peak memory.
# Usage: scripts/bench_tta.sh [OUT.jsonl]      (THREADS=2 REPS=1 by default; about 5 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench_tta.jsonl}
THREADS=${THREADS:-2}
REPS=${REPS:-1}
VLM=${VLM:-build/bin/vlmadapt}
: > "$OUT"
run() {  # method views
  $VLM bench tta --arch ViT-B/16 --n-cls 1000 --method "$1" --views "$2" --threads "$THREADS" --reps "$REPS" | tee -a "$OUT"
}
run zeroshot 1
run tda 1
run dpe 1
run zeroshot 32
run dmn 32
run zeroshot 64
run zero 64
run tpt 64
run mta 64
run boostadapter 64
run ctpt 64
