"""What `wastecls train --freeze-layers N` saves: model-only forward+backward+AdamW throughput
of tf_efficientnet_lite0 with its first N timm layer groups fixed (stem, then one per stage).

The counts are measured in rounds, one after another in each round, so that every count sees
the same drift of this shared machine; the speed-up is the ratio to N = 0 in the same round.
Freed memory is kept in the process, as `wastecls train` does on a CPU. Usage:
    python bench/bench_freeze.py [--size 288] [--counts 0 4 6] [--rounds 2] [--amp]
"""

from __future__ import annotations

import argparse
import os
import platform
from datetime import date

import torch
from common import model_only_rate

from waste_cli.core.runtime import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=288)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--counts", type=int, nargs="+", default=[0, 4, 6])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast, as `train --amp`")
    args = parser.parse_args()
    keep_freed_memory()
    print(f"# --freeze-layers benchmark, {date.today()}, {os.cpu_count()} cores "
          f"{platform.machine()}, torch {torch.__version__}; tf_efficientnet_lite0, "
          f"{args.size} px, batch {args.batch}, {'bf16 autocast' if args.amp else 'fp32'}, "
          "channels_last\n")
    print("| round | " + " | ".join(f"N={n} img/s (x N=0)" for n in args.counts) + " |")
    print("|---|" + "---|" * len(args.counts))
    for round_ in range(1, args.rounds + 1):
        rates = [model_only_rate("tf_efficientnet_lite0", args.size, args.batch, args.amp, n,
                                 args.seconds) for n in args.counts]
        base = rates[args.counts.index(0)] if 0 in args.counts else rates[0]
        print(f"| {round_} | " + " | ".join(f"{r:.1f} ({r / base:.2f})" for r in rates) + " |",
              flush=True)


if __name__ == "__main__":
    main()
