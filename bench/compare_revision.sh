#!/usr/bin/env bash
# Does a change keep what it must? Compares the working tree with git revision REV (default:
# HEAD~1) on this machine: (1) metrics.csv of four tiny training runs must be identical (timing
# columns left out), (2) predict and prepare throughput on DATA, old and new alternating for
# ROUNDS rounds, with byte-identical outputs. Needs the package's dependencies installed.
#   bash bench/compare_revision.sh [REV] [DATA] [ROUNDS]
set -euo pipefail
REV=${1:-HEAD~1}
DATA=${2:-../shared/data/trashnet}
ROUNDS=${3:-3}
NEW=$(pwd)
WORK=$(mktemp -d)
trap 'git worktree remove --force "$WORK/old" >/dev/null 2>&1; rm -rf "$WORK"' EXIT
git worktree add -f "$WORK/old" "$REV" -q
export HF_HUB_OFFLINE=1
MODEL="$NEW/waste_cli/assets/models/waste-lite0.onnx"

run() {  # run SIDE ARGS...: wastecls from that side's source tree
  local side=$1; shift
  local src=$NEW; [ "$side" = old ] && src=$WORK/old
  PYTHONPATH=$src python -m waste_cli "$@"
}

echo "== metrics.csv of tiny runs (must be identical)"
for side in old new; do
  dir=$WORK/train-$side
  run $side prepare "$NEW/samples/trashnet-mini" --out "$dir/data" -q > /dev/null
  tiny="--data $dir/data --arch resnet10t --no-pretrained --img-size 48 --batch-size 8 --project $dir/runs -q"
  run $side train $tiny --epochs 3 --name cosine > /dev/null
  run $side train $tiny --epochs 4 --sched step --name step > /dev/null
  run $side train $tiny --epochs 3 --sched exp --sampler weighted --name exp > /dev/null
  run $side train --data "$dir/data" --weights waste-lite0 --epochs 2 --project "$dir/runs" \
    --name builtin -q > /dev/null
  for name in cosine step exp builtin; do cut -d, -f1-8 "$dir/runs/$name/metrics.csv"; done \
    > "$WORK/metrics-$side.txt"
done
cmp "$WORK/metrics-old.txt" "$WORK/metrics-new.txt" && echo "identical"

echo "== throughput on $DATA (images/s; old and new alternate)"
count=$(find "$DATA" -type f \( -iname '*.jpg' -o -iname '*.png' \) | wc -l)
for round in $(seq "$ROUNDS"); do
  for side in old new; do
    start=$(date +%s.%N)
    run $side predict --model "$MODEL" "$DATA" -q --format csv --output "$WORK/pred-$side.csv"
    middle=$(date +%s.%N)
    rm -rf "$WORK/prep-$side"
    run $side prepare "$DATA" --out "$WORK/prep-$side" -q > /dev/null
    end=$(date +%s.%N)
    printf "round %s %-3s predict %6.1f  prepare %6.1f\n" "$round" "$side" \
      "$(echo "$count / ($middle - $start)" | bc -l)" "$(echo "$count / ($end - $middle)" | bc -l)"
  done
done
cmp "$WORK/pred-old.csv" "$WORK/pred-new.csv" && echo "predictions identical"
diff <(cd "$WORK/prep-old" && find . -name '*.jpg' | sort | xargs md5sum) \
     <(cd "$WORK/prep-new" && find . -name '*.jpg' | sort | xargs md5sum) > /dev/null \
  && echo "prepared images identical"
