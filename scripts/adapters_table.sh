#!/usr/bin/env bash
# The few-shot adapters table of docs/FEWSHOT.md on the built-in model: Fashion-MNIST at
# 1, 2, 4, 8 and 16 shots with 3 seeds: every training-free method (Tip-Adapter,
# Tip-Adapter-F, GDA, LP++, CLAP, ZPE) beside zero-shot, the linear probe and CoOp, with
# the seconds each run takes to fit (features included) and train. The methods that search
# run twice: train.selection = val (searches on the validation split, min(K, 4) images
# per class) and none (their papers' fixed values); nothing is chosen on test.
# `vlmadapt report` over all of it into report/fewshot/. SHOTS, SEEDS and OUT override;
# FORCE=true reruns finished runs. About 8 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
VLM=${VLM:-build/bin/vlmadapt}
OUT=${OUT:-runs/fewshot}
SEEDS=${SEEDS:-"1 2 3"}
SHOTS=${SHOTS:-"1 2 4 8 16"}
data=(--recipe recipes/datasets/fashion_mnist.ini)

train() {  # name recipe [values...]
  local name=$1 recipe=$2
  shift 2
  $VLM train "${data[@]}" --recipe "$recipe" --set output="$OUT" name="$name" force="${FORCE:-false}" "$@" >/dev/null
}

t0=$(date +%s)
train zeroshot recipes/zeroshot/zeroshot.ini data.shots=0
train zpe recipes/zpe/zpe.ini data.shots=0
for shots in $SHOTS; do
  for seed in $SEEDS; do
    s=(data.shots=$shots data.seed=$seed)
    train linear_probe recipes/linear_probe/linear_probe.ini "${s[@]}"
    train coop recipes/coop/coop.ini "${s[@]}"
    for m in tip_adapter tip_adapter_f gda lp_pp; do
      train "${m}_val" recipes/$m/$m.ini "${s[@]}" train.selection=val
      train "${m}_none" recipes/$m/$m.ini "${s[@]}" train.selection=none
    done
    train clap recipes/clap/clap.ini "${s[@]}"
  done
  echo "$shots shots: $(( $(date +%s) - t0 )) s"
done
$VLM report --out report/fewshot "$OUT" >/dev/null
echo "table: report/fewshot/report.md"
