#!/bin/bash
# Leave-one-class-out folds for bench/bench_confidence.py: the default split of DATA (all/),
# then per class C a dataset of the other classes (links into all/) and a model trained on it
# with the default recipe, shortened to 6 epochs (about 6 minutes each on 2 cores).
# Usage: bash bench/loco.sh OUT DATA WEIGHTS [CLASS...]   (default: every class)
set -euo pipefail
out=$1 data=$(realpath "$2") weights=$(realpath "$3")
shift 3
mkdir -p "$out" && cd "$out"
[ -d all ] || wastecls prepare "$data" --out all -q
for class in ${@:-$(ls all/train)}; do
  [ -f "runs/$class/best.pt" ] && continue
  rm -rf "data-$class"
  for split in train val test; do
    mkdir -p "data-$class/$split"
    for folder in all/$split/*; do
      [ "$(basename "$folder")" = "$class" ] || ln -s "$(realpath "$folder")" "data-$class/$split/"
    done
  done
  wastecls train --data "data-$class" --weights "$weights" --epochs 6 --seed 0 \
    --project runs --name "$class" -q
done
