"""DDP benchmark for issue 7: training images/s with 1 process and with 2 (torchrun, gloo).

Both runs train the same model for the same epochs on the same prepared data; images/s comes
from metrics.csv (data loading included; with 2 processes it is the sum over ranks). On a
2-core machine little gain is expected: the point is that the distributed path is correct.
Usage: python bench/bench_ddp.py --data bench/out/data --weights WEIGHTS
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

RECIPE = ["--arch", "efficientnet-lite0", "--img-size", "160", "--epochs", "2",
          "--batch-size", "32", "--workers", "1", "--cache", "ram", "-q"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="a `wastecls prepare` root")
    parser.add_argument("--weights", type=Path,
                        default=Path("../shared/weights/tf_efficientnet_lite0.in1k.safetensors"))
    args = parser.parse_args()
    print(f"# DDP benchmark, {date.today()}, {os.cpu_count()} cores {platform.machine()}")
    print("recipe: " + " ".join(RECIPE) + "\n")
    print("| processes | global batch | images/s (epoch 2) | val acc | wall s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for nproc, batch in ((1, 32), (2, 16)):
            start = time.perf_counter()
            subprocess.run(["wastecls", "train", "--data", str(args.data), "--weights",
                            str(args.weights), "--project", tmp, "--name", f"p{nproc}",
                            "--nproc", str(nproc), *RECIPE, "--batch-size", str(batch)],
                           check=True)
            wall = time.perf_counter() - start
            with open(Path(tmp) / f"p{nproc}" / "metrics.csv", newline="") as handle:
                last = list(csv.DictReader(handle))[-1]
            print(f"| {nproc} | 32 | {float(last['images_per_s']):.1f} | "
                  f"{float(last['val_acc']):.3f} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
