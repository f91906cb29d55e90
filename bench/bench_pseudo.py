"""Pseudo-labelling benchmark: does it beat supervised-only training, at the defaults?

`wastecls prepare DATA --unlabeled-frac 0.8` (20% of the training images keep their labels,
80% become the unlabelled pool, with the hidden truth recorded), then one `wastecls train` per
mode with the same seed and every other setting at its default (the CPU recipe `auto` resolves
to, `--pseudo-threshold 0.9` on the label-smoothing scale): --pseudolabel none, per-epoch and
per-batch. Each best.pt is evaluated on ROOT/test; pseudo-label precision comes from
metrics.csv.

Usage: python bench/bench_pseudo.py --data ../shared/data/trashnet \
           --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors [-- extra flags]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

from common import add_data_arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--modes", default="none,per-epoch,per-batch")
    parser.add_argument("extra", nargs="*", help="flags added to the bare command")
    args = parser.parse_args()
    recipe = ["--weights", str(args.weights), *args.extra]
    print(f"# pseudo-label benchmark, {date.today()}, {os.cpu_count()} cores "
          f"{platform.machine()}")
    print("command: wastecls train --data ROOT --pseudolabel MODE " + " ".join(recipe))
    print("\n| mode | test acc | balanced acc | best epoch | accepted (last epoch) | "
          "pseudo precision (last epoch) | seconds |\n|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subprocess.run(["wastecls", "prepare", str(args.data), "--out", str(data), "-q",
                        "--unlabeled-frac", "0.8"], check=True, capture_output=True)
        for mode in args.modes.split(","):
            runs = Path(tmp) / "runs"
            start = time.perf_counter()
            subprocess.run(["wastecls", "train", "--data", str(data), "--project", str(runs),
                            "--name", mode, "--pseudolabel", mode, "-q", *recipe], check=True)
            seconds = time.perf_counter() - start
            with open(runs / mode / "metrics.csv", newline="") as handle:
                rows = list(csv.DictReader(handle))
            report = json.loads(subprocess.run(
                ["wastecls", "evaluate", str(runs / mode / "best.pt"), "--data", str(data),
                 "--json"], check=True, capture_output=True, text=True).stdout)
            best_epoch = json.loads((runs / mode / "summary.json").read_text())["best_epoch"]
            last = rows[-1]
            accepted = (f"{float(last['pseudo_accepted']):.0f} / {float(last['pseudo_pool']):.0f}"
                        if "pseudo_accepted" in last else "-")
            precision = (f"{float(last['pseudo_precision']):.1%}"
                         if last.get("pseudo_precision") not in (None, "", "nan") else "-")
            print(f"| {mode} | {report['accuracy']:.2%} | {report['balanced_accuracy']:.2%} | "
                  f"{best_epoch} | {accepted} | {precision} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
