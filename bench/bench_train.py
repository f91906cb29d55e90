"""Training benchmark for issue 3: accuracy within a time budget, and data-loading overhead.

1. `wastecls prepare DATA` (default split, seed 0) into a temporary folder.
2. Model-only forward+backward+step throughput of the same model, batch size, image size,
   optimizer and threads, on random tensors already in memory.
3. `wastecls train` with the recipe below (plus any extra flags), timed end to end.
4. `wastecls evaluate best.pt --split test`: test accuracy.

Throughput ratio = mean images/s of the unfrozen training epochs (metrics.csv; data loading
included) / the model-only rate. Usage:
    python bench/bench_train.py --data ../shared/data/trashnet \
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

import timm
import torch
from common import add_data_arguments
from timm.optim import create_optimizer_v2

from waste_cli.models import freeze_layers

RECIPE = ["--arch", "efficientnet-lite0", "--img-size", "256", "--amp", "--epochs", "10", "--ema",
          "--lr", "1e-3", "--layer-decay", "0.7", "--aug", "light",
          "--cache", "ram", "--batch-size", "32"]


def _flag(args: list[str], name: str, default: str) -> str:
    """The value of the last `name` in `args` (extra flags override the recipe, as in the CLI)."""
    positions = [i for i, arg in enumerate(args) if arg == name]
    return args[positions[-1] + 1] if positions else default


def model_only_rate(arch: str, size: int, batch: int, amp: bool, frozen_layers: int,
                    seconds: float = 30.0) -> float:
    """Images/s of forward+backward+AdamW step on tensors already in memory (bf16 autocast
    when `amp`, as `wastecls train --amp` on a CPU; the first `frozen_layers` layer groups
    fixed and in eval mode, as `--freeze-layers`)."""
    model = timm.create_model(arch, num_classes=6).to(memory_format=torch.channels_last).train()
    for module in freeze_layers(model, frozen_layers):
        module.eval()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-4)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 6, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        done += batch
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--keep", type=Path, help="copy the run folder here")
    parser.add_argument("extra", nargs="*", help="flags added after the recipe")
    args = parser.parse_args()
    recipe = [*RECIPE, "--weights", str(args.weights), *args.extra]
    size = int(_flag(recipe, "--img-size", "224"))
    batch = int(_flag(recipe, "--batch-size", "32"))
    freeze = int(_flag(recipe, "--freeze-epochs", "0"))
    frozen_layers = int(_flag(recipe, "--freeze-layers", "0"))
    print(f"# train benchmark, {date.today()}, {os.cpu_count()} cores {platform.machine()}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print("recipe: wastecls train " + " ".join(recipe))
    with tempfile.TemporaryDirectory() as tmp:
        data, runs = Path(tmp) / "data", Path(tmp) / "runs"
        subprocess.run(["wastecls", "prepare", str(args.data), "--out", str(data), "-q"],
                       check=True, capture_output=True)
        amp = "--amp" in recipe
        # Measured before and after training: the machine's speed drifts over minutes.
        before = model_only_rate("tf_efficientnet_lite0", size, batch, amp, frozen_layers)
        start = time.perf_counter()
        subprocess.run(["wastecls", "train", "--data", str(data), "--project", str(runs),
                        "--name", "bench", *recipe], check=True)
        wall = time.perf_counter() - start
        after = model_only_rate("tf_efficientnet_lite0", size, batch, amp, frozen_layers)
        model_rate = (before + after) / 2
        run = runs / "bench"
        with open(run / "metrics.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        report = json.loads(subprocess.run(
            ["wastecls", "evaluate", str(run / "best.pt"), "--data", str(data), "--split", "test",
             "--json"], check=True, capture_output=True, text=True).stdout)
        if args.keep:
            subprocess.run(["cp", "-r", str(run), str(args.keep)], check=True)
    unfrozen = [float(r["images_per_s"]) for r in rows[freeze:]]
    train_rate = sum(unfrozen) / len(unfrozen)
    # The same question measured inside the run, immune to the machine's drift: the share of
    # the epochs the loop did not spend waiting for batches (timm's "data time").
    waited = sum(float(r["data_seconds"]) for r in rows[freeze:])
    computing = 1 - waited / sum(float(r["seconds"]) for r in rows[freeze:])
    train_seconds = sum(float(r["seconds"]) for r in rows)
    best = json.loads(json.dumps(max(rows, key=lambda r: float(r["val_acc"]))))
    print("\n| epoch | train acc | val acc | images/s | seconds | data seconds |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['epoch']} | {float(r['train_acc']):.3f} | {float(r['val_acc']):.3f} | "
              f"{float(r['images_per_s']):.1f} | {float(r['seconds']):.0f} | "
              f"{float(r['data_seconds']):.1f} |")
    print(f"\n- test accuracy of best.pt (epoch {best['epoch']}): {report['accuracy']:.2%} "
          f"(balanced {report['balanced_accuracy']:.2%}, macro-F1 {report['macro_f1']:.2%}, "
          f"{report['images']} images)")
    print(f"- wall time of `wastecls train` (start-up, caching, validation included): {wall:.0f} s;"
          f" training epochs alone: {train_seconds:.0f} s")
    print(f"- model-only forward+backward: {model_rate:.1f} img/s (before training "
          f"{before:.1f}, after {after:.1f}); training epochs (data loading "
          f"included, unfrozen epochs): {train_rate:.1f} img/s; "
          f"ratio {train_rate / model_rate:.2f}")
    print(f"- inside the run: the loop waited {waited:.0f} s for batches, so the model computed "
          f"{computing:.1%} of the epochs' time")


if __name__ == "__main__":
    main()
