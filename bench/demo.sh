#!/usr/bin/env bash
# The README demo: the whole job on the bundled TrashNet sample (72 photos), in a few minutes.
set -euo pipefail
DEMO=${DEMO:-demo}
wastecls prepare samples/trashnet-mini --out "$DEMO/data" --size 96 --overwrite
