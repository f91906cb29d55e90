"""What evaluate's confidence report costs: one `evaluate --out` in this process, with the time
spent writing the pictures (reliability diagram, risk-coverage curve) measured inside it.

Usage: python bench/bench_evaluate.py --model waste-lite0 --data bench/out/data
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from waste_cli.core.console import Reporter
from waste_cli.infer import evaluate as evaluate_module
from waste_cli.options import EvaluateOptions

TIMED = ("plot_reliability", "plot_risk_coverage")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="waste-lite0")
    parser.add_argument("--data", type=Path, required=True)
    args = parser.parse_args()
    spent = dict.fromkeys(TIMED, 0.0)
    for name in TIMED:  # wrap the two plots of the confidence report
        original = getattr(evaluate_module, name)

        def timed(*a, _original=original, _name=name, **k):
            start = time.perf_counter()
            try:
                return _original(*a, **k)
            finally:
                spent[_name] += time.perf_counter() - start

        setattr(evaluate_module, name, timed)
    with tempfile.TemporaryDirectory() as tmp:
        options = EvaluateOptions(model=args.model, data=args.data, out=Path(tmp) / "eval",
                                  quiet=True)
        start = time.perf_counter()
        result = evaluate_module.evaluate(options, Reporter(quiet=True))
        total = time.perf_counter() - start
    plots = sum(spent.values())
    print(f"evaluate {args.model} on {result.report['images']} images: {total:.1f} s, of which "
          f"the confidence pictures {plots:.2f} s ({plots / total:.1%})")


if __name__ == "__main__":
    main()
