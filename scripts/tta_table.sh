#!/usr/bin/env bash
# The test-time adaptation table of docs/TTA.md on the built-in model: every test-time
# method over a fixed subset of 1,000 Fashion-MNIST test images under Gaussian noise of
# severity 3 (one shuffled stream), then the online methods and zero-shot on a by-class
# and a Dirichlet stream with RUNS orders each; `vlmadapt report` over all of it into
# report/tta/. Hyper-parameters are the recipes' (the papers' defaults), never chosen on
# test. About 20 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
VLM=${VLM:-build/bin/vlmadapt}
OUT=${OUT:-runs/tta}
RUNS=${RUNS:-10}
DIRICHLET=${DIRICHLET:-0.01}
data=(--recipe recipes/datasets/fashion_mnist.ini)
common=(data.corruption=gaussian_noise data.severity=3 data.test_limit=1000 data.shots=0 output="$OUT")

tta() {  # name recipe [--set values...]
  local name=$1 recipe=$2
  shift 2
  local t0=$(date +%s)
  $VLM tta "${data[@]}" --recipe "$recipe" --set "${common[@]}" name="$name" "$@" >/dev/null
  echo "$name: $(( $(date +%s) - t0 )) s"
}

tta zeroshot recipes/zeroshot/zeroshot.ini
for m in tpt ctpt zero mta tda dmn boostadapter dpe rlcf rlcf_image; do
  [ -f recipes/$m/$m.ini ] && tta "$m" recipes/$m/$m.ini
done
tta difftpt recipes/tpt/difftpt.ini

for order in by_class dirichlet; do
  for m in zeroshot tda dmn boostadapter dpe; do
    [ -f recipes/$m/$m.ini ] || continue
    tta "${m}_${order}" recipes/$m/$m.ini --set eval.order=$order eval.dirichlet=$DIRICHLET eval.runs=$RUNS
  done
done
$VLM report --out report/tta "$OUT" >/dev/null
echo "table: report/tta/tta.md"
