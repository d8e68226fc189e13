#!/usr/bin/env bash
# The main job on a fresh machine: set-up, build, then zero-shot, linear probe and CoOp
# at 1, 4 and 16 shots with 3 seeds on Fashion-MNIST with the built-in default model,
# the report table, and the accuracy-versus-shots plot (report/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
VLM=build/bin/vlmadapt
OUT=${OUT:-runs/demo}
SEEDS=${SEEDS:-"1 2 3"}
SHOTS=${SHOTS:-"1 4 16"}

if [ ! -f models/default.safetensors ]; then
  # Without the built-in model, show the backbone at work on a fixture model.
  model=../shared/fixtures/clip/tiny_vit/model_openai.pt
  echo "models/default.safetensors is missing: zero-shot classification with $model instead"
  $VLM info "$model"
  $VLM classify --model "$model" --classes "cat,horse,rocket,coffee" ../shared/fixtures/preprocess/images/*.png
  exit 0
fi

start=$(date +%s)
common=(--recipe recipes/datasets/fashion_mnist.ini --set output="$OUT")
$VLM train "${common[@]}" --recipe recipes/zeroshot/zeroshot.ini --set data.shots=0 data.seed=1 >/dev/null
for shots in $SHOTS; do
  for seed in $SEEDS; do
    for method in linear_probe coop; do
      $VLM train "${common[@]}" --recipe recipes/$method/$method.ini \
        --set data.shots=$shots data.seed=$seed >/dev/null
    done
  done
done
$VLM report --out report "$OUT"
echo "main job: $(( $(date +%s) - start )) s after the build; plot: report/fashion_mnist_test_top1.png"
