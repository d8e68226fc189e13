#!/usr/bin/env bash
# Fitting time of every training-free method on random ViT-B/16 features of N_CLS
# classes x SHOTS images (each method's support views), with its searches on a validation
# split of 4 images per class; one JSON line per method (`vlmadapt bench fit`), for
# docs/FEWSHOT.md. About 10 minutes on 2 cores (most of it encoding 1000 class names).
set -euo pipefail
cd "$(dirname "$0")/.."
VLM=${VLM:-build/bin/vlmadapt}
N_CLS=${N_CLS:-1000}
SHOTS=${SHOTS:-16}
for m in ${METHODS:-tip_adapter tip_adapter_f gda lp_pp clap zpe linear_probe}; do
  $VLM bench --task fit --method "$m" --n-cls "$N_CLS" --shots "$SHOTS" --reps 1
done
