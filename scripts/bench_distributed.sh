#!/usr/bin/env bash
# Data-parallel scaling on one machine (docs/DISTRIBUTED.md): 1 and 2 processes with 1
# thread each (vlmadapt launch -n 2 --threads 1; data.workers = 0, so that images are
# decoded and augmented on that one thread too), on Fashion-MNIST with the tiny fixture
# ViT. Prints, per world size: TPT evaluation in images per second (sharded test split)
# and the seconds of one CoOp epoch (each rank half of every batch).
# Usage: scripts/bench_distributed.sh        (VLM=build/bin/vlmadapt; about 2-4 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
VLM=${VLM:-build/bin/vlmadapt}
MODEL=${MODEL:-$(cd .. && pwd)/shared/fixtures/clip/tiny_vit/model_openai.pt}
TPT_IMAGES=${TPT_IMAGES:-200}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cat > "$TMP/base.ini" <<INI
output = $TMP/runs
[data]
dataset = fashion_mnist
shots = 16
seed = 1
workers = 0
[model]
checkpoint = $MODEL
[train]
epochs = 2
batch_size = 32
INI
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }
for n in 1 2; do
  if [ "$n" = 1 ]; then run=(env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$VLM"); else run=("$VLM" launch -n 2 --threads 1 --); fi
  "${run[@]}" tta --recipe "$TMP/base.ini" --set method=tpt name=tpt$n data.test_limit=$TPT_IMAGES eval.views=16 >/dev/null 2>&1
  d=$TMP/runs/fashion_mnist/tpt/tpt${n}_16shot/seed1
  ips=$(json "$d/metrics.json" "1.0 / d['test']['seconds_per_image']")
  "${run[@]}" train --recipe "$TMP/base.ini" --set method=coop name=coop$n data.test_limit=10 >/dev/null 2>&1
  d=$TMP/runs/fashion_mnist/coop/coop${n}_16shot/seed1
  epoch=$(json "$d/run.json" "d['train_seconds'] / d['epochs']")
  printf '{"processes": %d, "threads_each": 1, "tpt_images_per_second": %.2f, "coop_epoch_seconds": %.3f}\n' "$n" "$ips" "$epoch"
done
