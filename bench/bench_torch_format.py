"""A/B of the memory format of `wastecls predict --backend torch` on the CPU, in the real
pipeline (engine in-process: loader worker decoding, batches of 4), alternated over rounds.
Model-only timings favour contiguous tensors on this machine, the pipeline favours
channels_last, which is what the product uses.

Usage: python bench/bench_torch_format.py MODEL.pt IMAGE_DIR [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from typing import Any

import torch

from waste_cli.backends import TorchRunner
from waste_cli.console import Reporter
from waste_cli.models import model_from_checkpoint
from waste_cli.predict import predict
from waste_cli.settings import PredictSettings


def rate(model: str, data: str, channels_last: bool) -> float:
    def build(cls: type[TorchRunner], checkpoint: dict[str, Any],
              device: torch.device) -> TorchRunner:
        memory = torch.channels_last if channels_last else torch.contiguous_format
        net = model_from_checkpoint(checkpoint).to(device, memory_format=memory)
        return cls(net, checkpoint["classes"], checkpoint["data_config"], device, channels_last)

    TorchRunner.from_checkpoint = classmethod(build)  # type: ignore[method-assign]
    settings = PredictSettings(inputs=[data], model=model, format="csv", quiet=True,
                               backend="torch")
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
        for channels_last in (True, False):
            rates[channels_last].append(rate(args.model, args.data, channels_last))
    print("| memory format | images/s (median) | rounds |\n|---|---|---|")
    for channels_last, values in rates.items():
        print(f"| {'channels_last' if channels_last else 'contiguous'} | "
              f"{statistics.median(values):.1f} | {', '.join(f'{v:.0f}' for v in values)} |")


if __name__ == "__main__":
    main()
