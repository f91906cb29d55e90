#!/usr/bin/env bash
# The README demo: audit -> prepare -> train -> evaluate -> predict -> export on the bundled
# TrashNet sample (72 photos), then the built-in model on a photo. Training starts from the built-in
# waste model (`--weights waste-lite0`, inside the package) with the default recipe, so it
# needs neither ../shared nor the Hugging Face Hub.
set -euo pipefail
DEMO=${DEMO:-demo}
set -x
wastecls audit samples/trashnet-mini --out "$DEMO/audit" --overwrite   # open $DEMO/audit/index.html
wastecls prepare samples/trashnet-mini --out "$DEMO/data" --overwrite
wastecls train --data "$DEMO/data" --weights waste-lite0 --project "$DEMO/runs" --name exp
RUN=$(ls -td "$DEMO"/runs/exp* | head -n 1)
wastecls evaluate "$RUN/best.pt" --data "$DEMO/data" --out "$DEMO/eval"
wastecls predict --model "$RUN/best.pt" "$DEMO/data/test/glass" --top-k 2
wastecls export --model "$RUN/best.pt" --onnx --out "$DEMO/model.onnx"
wastecls predict --model "$DEMO/model.onnx" "$DEMO/data/test" --format csv --output "$DEMO/predictions.csv"
# The model that ships with wastecls, on a bundled photo it never saw (no --model, no runs/train/ there).
SAMPLE_PHOTO="$PWD/samples/trashnet-mini/glass/glass1.jpg"
(cd "$DEMO" && wastecls predict "$SAMPLE_PHOTO" --top-k 2)
