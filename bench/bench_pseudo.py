"""Pseudo-labelling benchmark for issue 6: does it beat supervised-only training?

`wastecls prepare DATA --unlabeled-frac 0.8` (20% of the training images keep their labels,
80% become the unlabelled pool, with the hidden truth recorded), then three `wastecls train`
runs with the same seed, epochs and image size: --pseudolabel none, per-epoch and per-batch.
Each best.pt is evaluated on ROOT/test; pseudo-label precision comes from metrics.csv.

Usage: python bench/bench_pseudo.py --data ../shared/data/trashnet \
           --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors
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

RECIPE = ["--arch", "efficientnet-lite0", "--img-size", "160", "--epochs", "12",
          "--lr", "1e-3", "--layer-decay", "0.7", "--aug", "light", "--cache", "ram",
          "--workers", "1", "--batch-size", "32", "--pseudo-start", "4",
          "--pseudo-threshold", "0.8", "--pseudo-ramp", "2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--modes", default="none,per-epoch,per-batch")
    parser.add_argument("extra", nargs="*", help="flags added after the recipe")
    args = parser.parse_args()
    recipe = [*RECIPE, "--weights", str(args.weights), *args.extra]
    print(f"# pseudo-label benchmark, {date.today()}, {os.cpu_count()} cores "
          f"{platform.machine()}")
    print("recipe: wastecls train " + " ".join(recipe))
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
            best = max(rows, key=lambda r: float(r["val_acc"]))
            last = rows[-1]
            accepted = (f"{float(last['pseudo_accepted']):.0f} / {float(last['pseudo_pool']):.0f}"
                        if "pseudo_accepted" in last else "-")
            precision = (f"{float(last['pseudo_precision']):.1%}"
                         if last.get("pseudo_precision") not in (None, "", "nan") else "-")
            print(f"| {mode} | {report['accuracy']:.2%} | {report['balanced_accuracy']:.2%} | "
                  f"{best['epoch']} | {accepted} | {precision} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
