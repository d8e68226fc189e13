#!/usr/bin/env bash
# The base-to-new table of docs/PROMPT_LEARNERS.md on the built-in model: Fashion-MNIST,
# trained on the 5 base classes with 16 shots, evaluated on the base and the 5 new classes
# (harmonic mean H), 3 seeds: zero-shot and every prompt learner, each with its paper's
# base-to-new recipe (epochs, batch, learning rate; the last epoch is evaluated, nothing is
# chosen on test). MaPLe and PromptSRC learn tokens in 9 of ViT-B/16's 12 layers; the
# built-in towers have 4, so they get depth 3 here. `vlmadapt report` over all of it into
# report/prompt_learners/. SEEDS, OUT and METHODS override; FORCE=true reruns finished runs.
set -euo pipefail
cd "$(dirname "$0")/.."
VLM=${VLM:-build/bin/vlmadapt}
OUT=${OUT:-runs/prompt_learners}
SEEDS=${SEEDS:-"1 2 3"}
METHODS=${METHODS:-"coop cocoop pre kgcoop prograd maple promptsrc"}
base=(--recipe recipes/datasets/fashion_mnist.ini)

train() {  # name recipe [values...]
  local name=$1 recipe=$2
  shift 2
  $VLM train "${base[@]}" --recipe "$recipe" --recipe recipes/protocols/base_to_new.ini \
    --set output="$OUT" name="$name" force="${FORCE:-false}" "$@" >/dev/null
}

# What each method needs beyond its recipe on the built-in model.
extra() {
  case $1 in
    coop) echo "coop.n_ctx=4 coop.ctx_init=a_photo_of_a train.epochs=200" ;;  # CoCoOp's base-to-new CoOp (vit_b16_ctxv1)
    maple) echo "maple.depth=3" ;;
    promptsrc) echo "promptsrc.depth_text=3 promptsrc.depth_vision=3" ;;
  esac
}

t0=$(date +%s)
train zeroshot recipes/zeroshot/zeroshot.ini data.shots=0
for m in $METHODS; do
  for seed in $SEEDS; do
    # shellcheck disable=SC2046
    train "$m" recipes/$m/$m.ini data.seed=$seed $(extra "$m")
  done
  echo "$m: $(( $(date +%s) - t0 )) s"
done
$VLM report --out report/prompt_learners "$OUT" >/dev/null
echo "table: report/prompt_learners/report.md"
