"""Leave-one-source-out transfer: train on every source but one, test on the one left out.

1. `wastecls prepare SRC1 SRC2 ...` merges the sources into OUT/merged (the split is stratified
   by class and source, so each source's photos are split as they would be alone).
2. For each left-out source L: `wastecls prepare` of the other sources into OUT/without-L (the
   same split of their photos as in the merge) and `wastecls train` on it with the bare recipe
   (`--weights W --seed 0`, plus any extra flags).
3. `wastecls evaluate best.pt --data OUT/merged --map {} --json` scores the model on the merged
   test split in its own classes: per source, the left-out one's accuracy (on its photos of
   classes the model knows) is the transfer, the others' the in-source accuracy; `unseen` is
   the share of the left-out source's photos of classes the model never saw that it flags.

Every model is scored on the validation split as well: recipes are compared (picked) on the
left-out source's validation photos, never on its test photos, which only report.

Results go to OUT/transfer[-CANDIDATE].json and print as BENCHMARKS.md table rows. Usage:
    python bench/bench_transfer.py ../shared/data/trashnet ../shared/data/garbage-v2 \\
        --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors \\
        [--leave-out garbage-v2] [--out bench/out/transfer] [--candidate lp-ft] \\
        [-- extra train flags, e.g. --freeze-epochs 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def wastecls(*args: object) -> subprocess.CompletedProcess:
    done = subprocess.run(["wastecls", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"wastecls {' '.join(map(str, args))} failed:\n{done.stderr}")
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", type=Path, nargs="+", help="class-folder datasets")
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--leave-out", nargs="*", default=None,
                        help="the sources to leave out, by name (default: each in turn)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/transfer"))
    parser.add_argument("--candidate", default="", help="a name for the recipe (the extra "
                        "flags): its runs and results are kept apart")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    names = [path.resolve().name for path in args.sources]
    merged = args.out / "merged"
    wastecls("prepare", *args.sources, "--out", merged, "--overwrite", "-q")
    identity = args.out / "identity.yaml"
    identity.write_text("{}\n")  # names kept: the model's classes are the space
    results = []
    for left, name in [(p, n) for p, n in zip(args.sources, names, strict=True)
                       if args.leave_out is None or n in args.leave_out]:
        rest = [p for p in args.sources if p != left]
        data = args.out / f"without-{name}"
        wastecls("prepare", *rest, "--out", data, "--overwrite", "-q")
        start = time.perf_counter()
        run_name = f"{args.candidate + '-' if args.candidate else ''}without-{name}"
        wastecls("train", "--data", data, "--weights", args.weights, "--seed", "0",
                 "--project", args.out / "runs", "--name", run_name, "-q", *extra)
        seconds = time.perf_counter() - start
        runs = sorted((args.out / "runs").glob(f"{run_name}*/best.pt"),
                      key=lambda p: p.stat().st_mtime)
        val, report = (json.loads(wastecls("evaluate", runs[-1], "--data", merged, "--map",
                                           identity, "--split", split, "--json").stdout)
                       for split in ("val", "test"))
        row = {"left_out": name, "trained_on": [n for n in names if n != name],
               "candidate": args.candidate or "bare", "train_seconds": round(seconds),
               "extra_flags": extra, "per_source": report["per_source"],
               "unseen": report["unseen"], "val_per_source": val["per_source"]}
        results.append(row)
        inside = ", ".join(f"{k} {v['accuracy']:.2%} of {v['images']}"
                           for k, v in report["per_source"].items() if k != name)
        out = report["per_source"].get(name, {"accuracy": float("nan"), "images": 0})
        unseen = report["unseen"]  # `flagged` is null (JSON) when the model knows every class
        flagged = ("-" if unseen["flagged"] is None
                   else f"{unseen['flagged']:.1%} of {unseen['images']}")
        picked_on = val["per_source"].get(name, {"accuracy": float("nan")})["accuracy"]
        print(f"| {row['candidate']} | {', '.join(row['trained_on'])} | {name} | "
              f"{seconds:.0f} s | {inside} | {picked_on:.2%} | {out['accuracy']:.2%} of "
              f"{out['images']} | {flagged} |", flush=True)
    suffix = f"-{args.candidate}" if args.candidate else ""
    (args.out / f"transfer{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
