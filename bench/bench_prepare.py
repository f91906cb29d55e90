"""Time `wastecls prepare` on a real dataset (default ../shared/data/trashnet), end to end.

Runs the console command itself (process start included) and prints one Markdown table row per
run, ready for BENCHMARKS.md. Usage: python bench/bench_prepare.py --data DIR [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/trashnet"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    images = sum(1 for p in args.data.rglob("*") if p.is_file())
    print(f"# prepare benchmark: {images} files in {args.data}, {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}, {date.today()}")
    print("| run | seconds | images/s |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.repeat):
            out = Path(tmp) / f"out{run}"
            start = time.perf_counter()
            subprocess.run(["wastecls", "prepare", str(args.data), "--out", str(out), "-q",
                            "--size", str(args.size)], check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - start
            print(f"| {run + 1} | {seconds:.1f} | {images / seconds:.0f} |")
            shutil.rmtree(out)


if __name__ == "__main__":
    main()
