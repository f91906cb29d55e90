"""A/B experiments inside `wastecls predict` (engine in-process, so process start is excluded),
alternated over rounds so the machine's drift hits both sides alike.

- `spinning`: onnxruntime intra-op threads spinning (its default) or not (wastecls): spinning
  threads take the cores the loader workers need for decoding.
- `format`: channels_last or contiguous tensors for `--backend torch` on the CPU (model-only
  timings favour contiguous on this machine; the pipeline is what counts).

Usage: python bench/bench_predict_ab.py {spinning,format} MODEL.pt IMAGE_DIR [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import onnxruntime as ort
import torch

from waste_cli.backends import TorchRunner
from waste_cli.console import Reporter
from waste_cli.models import model_from_checkpoint
from waste_cli.predict import predict
from waste_cli.settings import PredictSettings

ORIGINAL_ENTRY = ort.SessionOptions.add_session_config_entry


def spinning(on: bool) -> str:
    def entry(self: ort.SessionOptions, key: str, value: str) -> None:
        if not (on and key == "session.intra_op.allow_spinning"):
            ORIGINAL_ENTRY(self, key, value)

    ort.SessionOptions.add_session_config_entry = entry
    return "onnxruntime"


def channels_last(on: bool) -> str:
    def build(cls: type[TorchRunner], checkpoint: dict[str, Any],
              device: torch.device) -> TorchRunner:
        memory = torch.channels_last if on else torch.contiguous_format
        net = model_from_checkpoint(checkpoint).to(device, memory_format=memory)
        return cls(net, checkpoint["classes"], checkpoint["data_config"], device, on)

    TorchRunner.from_checkpoint = classmethod(build)  # type: ignore[method-assign]
    return "torch"


EXPERIMENTS: dict[str, tuple[Callable[[bool], str], str, str]] = {
    "spinning": (spinning, "spinning on (onnxruntime default)", "spinning off (wastecls)"),
    "format": (channels_last, "channels_last (wastecls)", "contiguous"),
}


def rate(model: str, data: str, backend: str) -> float:
    settings = PredictSettings(inputs=[data], model=model, format="csv", quiet=True,
                               backend=backend)
    start = time.perf_counter()
    result = predict(settings, io.StringIO(), Reporter(quiet=True))
    return result.predicted / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=EXPERIMENTS)
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    apply, label_on, label_off = EXPERIMENTS[args.experiment]
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for on in (True, False):
            rates[on].append(rate(args.model, args.data, apply(on)))
    print("| variant | images/s (median) | rounds |\n|---|---|---|")
    for on, values in rates.items():
        print(f"| {label_on if on else label_off} | {statistics.median(values):.1f} | "
              f"{', '.join(f'{v:.0f}' for v in values)} |")


if __name__ == "__main__":
    main()
