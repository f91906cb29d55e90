"""Training benchmark: what the bare `wastecls train` reaches, in how long, and its overhead.

1. `wastecls prepare DATA` (default split, seed 0) into a temporary folder.
2. Model-only forward+backward+step throughput of the same model, batch size, image size,
   optimizer, frozen layers and threads (the values `auto` resolves to), on random tensors
   already in memory.
3. `wastecls train --data ROOT --weights W --seed N` with no tuning flags (plus any extra
   flags), timed end to end; it prints its automatic choices, which are also in config.yaml.
4. `wastecls evaluate best.pt --split test`: test accuracy.

Throughput ratio = mean images/s of the unfrozen training epochs (metrics.csv; data loading
included) / the model-only rate. With `--seeds 0 1 ...`, steps 2-4 repeat per training seed and
the mean test accuracy is printed. Usage:
    python bench/bench_train.py --data ../shared/data/trashnet \
        --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors [--seeds 0 1] \
        [-- extra flags]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from common import add_data_arguments, default_settings, model_only_rate

from waste_cli.core.runtime import keep_freed_memory


def _flag(args: list[str], name: str, default: str) -> str:
    """The value of the last `name` in `args` (extra flags override the recipe, as in the CLI)."""
    positions = [i for i, arg in enumerate(args) if arg == name]
    return args[positions[-1] + 1] if positions else default


def train_and_test(data: Path, runs: Path, recipe: list[str], seed: int, keep: Path | None
                   ) -> dict:
    """One `wastecls train` with `--seed seed`, timed, its model-only rate measured before and
    after (the machine's speed drifts over minutes), and its best.pt evaluated on the test split."""
    weights = _flag(recipe, "--weights", "")
    auto = default_settings(data, Path(weights) if weights else None)
    size = int(_flag(recipe, "--img-size", str(auto.img_size)))
    batch = int(_flag(recipe, "--batch-size", str(auto.batch_size)))
    frozen_layers = int(_flag(recipe, "--freeze-layers", str(auto.freeze_layers)))
    amp = "--amp" in recipe or bool(auto.amp)
    before = model_only_rate("tf_efficientnet_lite0", size, batch, amp, frozen_layers)
    start = time.perf_counter()
    subprocess.run(["wastecls", "train", "--data", str(data), "--project", str(runs),
                    "--name", f"seed{seed}", *recipe, "--seed", str(seed)], check=True)
    wall = time.perf_counter() - start
    after = model_only_rate("tf_efficientnet_lite0", size, batch, amp, frozen_layers)
    run = runs / f"seed{seed}"
    with open(run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    report = json.loads(subprocess.run(
        ["wastecls", "evaluate", str(run / "best.pt"), "--data", str(data), "--split", "test",
         "--json"], check=True, capture_output=True, text=True).stdout)
    if keep:
        shutil.copytree(run, keep / f"seed{seed}", dirs_exist_ok=True)  # a rerun refreshes it
    best_epoch = json.loads((run / "summary.json").read_text())["best_epoch"]
    return {"seed": seed, "rows": rows, "report": report, "wall": wall, "before": before,
            "after": after, "best_epoch": best_epoch}


def print_run(result: dict, freeze_epochs: int) -> tuple[float, float]:
    """The run's epochs and numbers; returns (test accuracy, throughput ratio)."""
    rows, report = result["rows"], result["report"]
    unfrozen = [float(r["images_per_s"]) for r in rows[freeze_epochs:]]
    train_rate = sum(unfrozen) / len(unfrozen)
    model_rate = (result["before"] + result["after"]) / 2
    # The same question measured inside the run, immune to the machine's drift: the share of
    # the epochs the loop did not spend waiting for batches (timm's "data time").
    waited = sum(float(r["data_seconds"]) for r in rows[freeze_epochs:])
    computing = 1 - waited / sum(float(r["seconds"]) for r in rows[freeze_epochs:])
    train_seconds = sum(float(r["seconds"]) for r in rows)
    print(f"\n## seed {result['seed']}\n\n| epoch | train acc | val acc | val loss | images/s | "
          "seconds | data seconds |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['epoch']} | {float(r['train_acc']):.3f} | {float(r['val_acc']):.3f} | "
              f"{float(r['val_loss']):.4f} | {float(r['images_per_s']):.1f} | "
              f"{float(r['seconds']):.0f} | {float(r['data_seconds']):.1f} |")
    print(f"\n- test accuracy of best.pt (epoch {result['best_epoch']}): "
          f"{report['accuracy']:.2%} (balanced {report['balanced_accuracy']:.2%}, macro-F1 "
          f"{report['macro_f1']:.2%}, {report['images']} images)")
    print(f"- wall time of `wastecls train` (start-up, caching, validation included): "
          f"{result['wall']:.0f} s; training epochs alone: {train_seconds:.0f} s")
    print(f"- model-only forward+backward: {model_rate:.1f} img/s (before training "
          f"{result['before']:.1f}, after {result['after']:.1f}); training epochs (data loading "
          f"included, unfrozen epochs): {train_rate:.1f} img/s; "
          f"ratio {train_rate / model_rate:.2f}")
    print(f"- inside the run: the loop waited {waited:.0f} s for batches, so the model computed "
          f"{computing:.1%} of the epochs' time")
    return report["accuracy"], train_rate / model_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one run per training seed (the split stays seed 0); several give "
                             "the recipe's mean, which one run cannot: the seed alone moves "
                             "test accuracy by points on 505 images")
    parser.add_argument("--keep", type=Path, help="copy the run folders here (seedN/)")
    parser.add_argument("extra", nargs="*", help="flags added after the recipe")
    args = parser.parse_args()
    keep_freed_memory()  # as `wastecls train` on a CPU does, so that model-only is comparable
    recipe = ["--weights", str(args.weights), *args.extra]
    freeze_epochs = int(_flag(recipe, "--freeze-epochs", "0"))
    print(f"# train benchmark, {date.today()}, {os.cpu_count()} cores {platform.machine()}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print("command: wastecls train --data ROOT " + " ".join(recipe) + f"; seeds {args.seeds}")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data, runs = Path(tmp) / "data", Path(tmp) / "runs"
        subprocess.run(["wastecls", "prepare", str(args.data), "--out", str(data), "-q"],
                       check=True, capture_output=True)
        for seed in args.seeds:
            result = train_and_test(data, runs, recipe, seed, args.keep)
            results.append((result, *print_run(result, freeze_epochs)))
    if len(results) > 1:
        accuracies = [accuracy for _, accuracy, _ in results]
        print("\n| seed | test accuracy | `train` wall time | throughput ratio |\n"
              "|---|---|---|---|")
        for result, accuracy, ratio in results:
            print(f"| {result['seed']} | {accuracy:.2%} | {result['wall']:.0f} s | {ratio:.2f} |")
        print(f"\n- mean test accuracy over {len(results)} seeds: "
              f"{sum(accuracies) / len(accuracies):.2%} (range {min(accuracies):.2%}-"
              f"{max(accuracies):.2%}); slowest run {max(r['wall'] for r, _, _ in results):.0f} s")


if __name__ == "__main__":
    main()
