#!/usr/bin/env bash
# The weight-modifier table of docs/MODIFIERS_AND_PSEUDOLABELS.md on the built-in model:
# Fashion-MNIST at 1, 4 and 16 shots with 3 seeds: R-AMT (masks on the image tower) and
# CLIP-LoRA (low-rank updates of both towers' attention) beside zero-shot, the linear probe
# and CoOp, each with its paper's recipe and the last epoch (the linear probe searches C on
# the validation split; nothing is chosen on test), with the seconds each run takes.
# `vlmadapt report` over all of it into report/modifiers/. SHOTS, SEEDS, METHODS and OUT
# override; FORCE=true reruns finished runs.
set -euo pipefail
cd "$(dirname "$0")/.."
VLM=${VLM:-build/bin/vlmadapt}
OUT=${OUT:-runs/modifiers}
SEEDS=${SEEDS:-"1 2 3"}
SHOTS=${SHOTS:-"1 4 16"}
METHODS=${METHODS:-"linear_probe coop clip_lora ramt"}
data=(--recipe recipes/datasets/fashion_mnist.ini)

train() {  # name recipe [values...]
  local name=$1 recipe=$2
  shift 2
  $VLM train "${data[@]}" --recipe "$recipe" --set output="$OUT" name="$name" force="${FORCE:-false}" "$@" >/dev/null 2>&1
}

t0=$(date +%s)
train zeroshot recipes/zeroshot/zeroshot.ini data.shots=0
for shots in $SHOTS; do
  for seed in $SEEDS; do
    for m in $METHODS; do
      train "$m" recipes/$m/$m.ini data.shots="$shots" data.seed="$seed"
    done
  done
  echo "$shots shots: $(( $(date +%s) - t0 )) s"
done
$VLM report --out report/modifiers "$OUT" >/dev/null
echo "table: report/modifiers/report.md"
