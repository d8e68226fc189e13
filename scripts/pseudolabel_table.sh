#!/usr/bin/env bash
# The pseudolabel tables of docs/MODIFIERS_AND_PSEUDOLABELS.md on the built-in model: Fashion-MNIST under the
# three paradigms of Menghini et al. (ssl: 2 labels per class; ul: none; trzsl: 62% of the
# classes seen), zero-shot CLIP ("a photo of a {}") beside FPL, IFPL and GRIP with textual
# prompts (PROMPT=visual: the image tower's prompt tokens; give it its own OUT), the paper's recipe (150 epochs per round, SGD 0.1, the last epoch; nothing is
# chosen on test), on a seeded subset of UNLABELLED unlabelled images (the paper's
# datasets have 1-20k train images; GRIP's last rounds train on all of them) and, for
# trzsl, TRZSL_SHOTS labelled images per seen class (the paper labels all of them: 36,000
# here). Top-1 on the test split; for trzsl the harmonic mean of seen and unseen top-1.
# SEEDS, OUT, UNLABELLED, EPOCHS, TRZSL_SHOTS, PARADIGMS, STRATEGIES and PROMPT override;
# FORCE=true reruns finished runs.
set -euo pipefail
cd "$(dirname "$0")/.."
VLM=${VLM:-build/bin/vlmadapt}
OUT=${OUT:-runs/pseudolabel}
SEEDS=${SEEDS:-"1 2 3"}
UNLABELLED=${UNLABELLED:-1000}
EPOCHS=${EPOCHS:-150}
STRATEGIES=${STRATEGIES:-"fpl ifpl grip"}
PARADIGMS=${PARADIGMS:-"ssl ul trzsl"}
TRZSL_SHOTS=${TRZSL_SHOTS:-16}
PROMPT=${PROMPT:-textual}
base=(--recipe recipes/datasets/fashion_mnist.ini)

train() {  # name recipe [values...]
  local name=$1 recipe=$2
  shift 2
  $VLM train "${base[@]}" --recipe "$recipe" --set output="$OUT" name="$name" force="${FORCE:-false}" "$@" >/dev/null
}

t0=$(date +%s)
for paradigm in $PARADIGMS; do
  recipe=recipes/pseudolabel/pseudolabel.ini
  [ $paradigm = ssl ] || recipe=recipes/pseudolabel/pseudolabel_$paradigm.ini
  case $paradigm in ssl) shots=2 ;; ul) shots=0 ;; trzsl) shots=$TRZSL_SHOTS ;; esac
  for seed in $SEEDS; do
    train "zeroshot_$paradigm" recipes/zeroshot/zeroshot.ini data.paradigm=$paradigm data.shots=$shots \
      data.seed="$seed" "zeroshot.templates=a photo of a {}"
    for s in $STRATEGIES; do
      train "${s}_$paradigm" "$recipe" pseudolabel.strategy="$s" pseudolabel.prompt="$PROMPT" data.seed="$seed" data.shots=$shots \
        data.unlabelled_limit="$UNLABELLED" train.epochs="$EPOCHS"
      echo "$paradigm $s seed $seed: $(( $(date +%s) - t0 )) s"
    done
  done
done

python3 - "$OUT" "$STRATEGIES" <<'PY'
import glob, json, statistics, sys
out, strategies = sys.argv[1], ["zeroshot"] + sys.argv[2].split()
print("| | " + " | ".join(s if s == "zeroshot" else s.upper() for s in strategies) + " |")
print("|---" * (len(strategies) + 1) + "|")
for paradigm in ["ssl", "ul", "trzsl"]:
    cells = []
    for s in strategies:
        method = "zeroshot" if s == "zeroshot" else "pseudolabel"
        values = []
        for f in sorted(glob.glob(f"{out}/fashion_mnist/{method}/{s}_{paradigm}_*shot/seed*/metrics.json")):
            m = json.load(open(f))
            values.append(m["harmonic_mean"] if paradigm == "trzsl" else m["test"]["top1"])
        if not values:
            cells.append("-")
        elif len(values) == 1:
            cells.append(f"{values[0]:.1f}")
        else:
            cells.append(f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}")
    print(f"| {paradigm}{' (H)' if paradigm == 'trzsl' else ''} | " + " | ".join(cells) + " |")
PY
