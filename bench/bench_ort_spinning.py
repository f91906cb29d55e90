"""A/B of onnxruntime's intra-op spinning inside `wastecls predict` (engine, in-process, so
process start is excluded), alternated over rounds. The product turns spinning off: idle ORT
threads that spin take the cores the loader workers need for decoding.

Usage: python bench/bench_ort_spinning.py MODEL.pt IMAGE_DIR [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import onnxruntime as ort

from waste_cli.console import Reporter
from waste_cli.predict import predict
from waste_cli.settings import PredictSettings

ORIGINAL = ort.SessionOptions.add_session_config_entry


def rate(model: str, data: str, spin: bool) -> float:
    def entry(self: ort.SessionOptions, key: str, value: str) -> None:
        if not (spin and key == "session.intra_op.allow_spinning"):
            ORIGINAL(self, key, value)

    ort.SessionOptions.add_session_config_entry = entry
    settings = PredictSettings(inputs=[data], model=model, format="csv", quiet=True)
    start = time.perf_counter()
    result = predict(settings, io.StringIO(), Reporter(quiet=True))
    return result.predicted / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for spin in (True, False):
            rates[spin].append(rate(args.model, args.data, spin))
    print("| intra-op spinning | images/s (median) | rounds |\n|---|---|---|")
    for spin, values in rates.items():
        print(f"| {'on (onnxruntime default)' if spin else 'off (wastecls)'} | "
              f"{statistics.median(values):.1f} | {', '.join(f'{v:.0f}' for v in values)} |")


if __name__ == "__main__":
    main()
