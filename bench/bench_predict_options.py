"""Choose `wastecls predict` CPU defaults by measurement: end to end (process start included)
images/s for batch sizes and OpenMP wait policies, alternated over several rounds so that the
machine's drift hits every variant alike. Prints the median per variant.

Usage: python bench/bench_predict_options.py --model best.pt --data DIR [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from waste_cli.data.scan import list_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help=".pt or .onnx")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    images = len(list_images(args.data))
    variants = [(b, policy) for b in args.batch_sizes.split(",") for policy in ("", "PASSIVE")]
    rates: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for batch, policy in variants:
                env = dict(os.environ)
                if policy:
                    env["OMP_WAIT_POLICY"] = policy
                start = time.perf_counter()
                subprocess.run(["wastecls", "predict", str(args.data), "-m", str(args.model),
                                "--backend", args.backend, "--batch-size", batch, "--format",
                                "csv", "--output", f"{tmp}/out.csv", "-q"], env=env, check=True)
                rates[(batch, policy)].append(images / (time.perf_counter() - start))
    print(f"# predict options, {args.backend}, {images} images, median of {args.rounds} rounds")
    print("| batch | OMP_WAIT_POLICY | images/s |\n|---|---|---|")
    for (batch, policy), values in rates.items():
        print(f"| {batch} | {policy or 'default'} | {statistics.median(values):.1f} |")


if __name__ == "__main__":
    main()
