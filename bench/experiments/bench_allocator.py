"""What `keep_freed_memory` (glibc's mmap off, trim threshold raised; `wastecls train` on a CPU
does it) is worth: model-only forward+backward+AdamW throughput of tf_efficientnet_lite0, fp32
and bf16 autocast, with glibc's default allocator settings and with freed memory kept.

The setting cannot be undone in a process, so each measurement runs in a fresh one; the four
cases run one after another in each round, so that each round sees the same drift of this shared
machine, and the speed-up is the ratio within a round. Usage:
    python bench/bench_allocator.py [--size 288] [--freeze-layers 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from datetime import date

import torch
from common import model_only_rate

from waste_cli.core.runtime import keep_freed_memory


def _child(args: argparse.Namespace) -> None:
    kept = keep_freed_memory() if args.keep else False
    rate = model_only_rate("tf_efficientnet_lite0", args.size, args.batch, args.amp,
                           args.freeze_layers, args.seconds)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rate": rate, "peak_mib": peak, "kept": kept}))


def _measure(args: argparse.Namespace, keep: bool, amp: bool) -> dict:
    command = [sys.executable, __file__, "--child", "--size", str(args.size), "--batch",
               str(args.batch), "--freeze-layers", str(args.freeze_layers), "--seconds",
               str(args.seconds)] + (["--keep"] if keep else []) + (["--amp"] if amp else [])
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=288)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--freeze-layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--amp", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    print(f"# allocator benchmark, {date.today()}, {os.cpu_count()} cores {platform.machine()}, "
          f"{platform.libc_ver()[0] or 'no glibc'}, torch {torch.__version__}; "
          f"tf_efficientnet_lite0, {args.size} px, batch {args.batch}, --freeze-layers "
          f"{args.freeze_layers}, channels_last\n")
    cases = [(False, False), (True, False), (False, True), (True, True)]
    names = [f"{'bf16' if amp else 'fp32'} {'kept' if keep else 'default'}"
             for keep, amp in cases]
    print("| round | " + " | ".join(f"{n} img/s (peak MiB)" for n in names)
          + " | fp32 kept / default | bf16 kept / default |")
    print("|---|" + "---|" * (len(cases) + 2))
    for round_ in range(1, args.rounds + 1):
        runs = [_measure(args, keep, amp) for keep, amp in cases]
        cells = [f"{r['rate']:.1f} ({r['peak_mib']:.0f})" for r in runs]
        print(f"| {round_} | " + " | ".join(cells) + f" | {runs[1]['rate'] / runs[0]['rate']:.2f}"
              f" | {runs[3]['rate'] / runs[2]['rate']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
