#!/usr/bin/env bash
# The README demo: prepare -> train -> evaluate -> predict -> export on the bundled TrashNet
# sample (72 photos). Uses the shared ImageNet weights when they are beside the repo, else
# trains from scratch (the Hugging Face Hub may be out of reach; see README "Offline use").
set -euo pipefail
DEMO=${DEMO:-demo}
WEIGHTS=${SHARED_WEIGHTS:-../shared/weights/tf_efficientnet_lite0.in1k.safetensors}
if [ -f "$WEIGHTS" ]; then
  START=(--arch efficientnet-lite0 --weights "$WEIGHTS")
else
  echo "note: $WEIGHTS not found; training from scratch (--no-pretrained)"
  START=(--arch efficientnet-lite0 --no-pretrained)
fi
set -x
wastecls prepare samples/trashnet-mini --out "$DEMO/data" --size 128 --overwrite
wastecls train --data "$DEMO/data" "${START[@]}" --img-size 112 --epochs 15 --batch-size 16 \
  --lr 3e-3 --project "$DEMO/runs" --name exp --cache ram
RUN=$(ls -td "$DEMO"/runs/exp* | head -n 1)
wastecls evaluate "$RUN/best.pt" --data "$DEMO/data" --out "$DEMO/eval"
wastecls predict --model "$RUN/best.pt" "$DEMO/data/test/glass" --top-k 2
wastecls export --model "$RUN/best.pt" --onnx --out "$DEMO/model.onnx"
wastecls predict --model "$DEMO/model.onnx" "$DEMO/data/test" --format csv --output "$DEMO/predictions.csv"
# The model that ships with wastecls, on a bundled photo it never saw (no --model, no runs/train/ there).
SAMPLE_PHOTO="$PWD/samples/trashnet-mini/glass/glass1.jpg"
(cd "$DEMO" && wastecls predict "$SAMPLE_PHOTO" --top-k 2)
