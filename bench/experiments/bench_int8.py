"""Which int8 recipe keeps a model's answers, chosen on the validation split (never the test).

Quantizes an fp32 export with onnxruntime (static QDQ, per-channel weights) under several
calibration methods, with the stem and classifier quantized or kept in float, and prints each
variant's top-1 agreement with fp32 and accuracy on ROOT/val, its calibration time and its
model-only speed. Usage:
    python bench/bench_int8.py --model runs/train/exp/best.pt --data PREPARED_ROOT
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from waste_cli.data.scan import list_images
from waste_cli.data.sources import load_rgb
from waste_cli.data.transforms import eval_transform
from waste_cli.export.formats import stem_and_classifier_nodes
from waste_cli.model.backends import OnnxRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/common.py
from common import runner_rate

PERCENTILE = (CalibrationMethod.Percentile, {"CalibPercentile": 99.99})
VARIANTS = {  # name: (images, method, extra options, keep the ends in float)
    "min-max, 128 images": (128, CalibrationMethod.MinMax, {}, False),
    "min-max, 512 images": (512, CalibrationMethod.MinMax, {}, False),
    "percentile 99.99": (128, *PERCENTILE, False),
    "entropy": (128, CalibrationMethod.Entropy, {}, False),
    "min-max, 128 images, ends in float": (128, CalibrationMethod.MinMax, {}, True),
    "percentile 99.99, ends in float": (128, *PERCENTILE, True),
    "entropy, ends in float": (128, CalibrationMethod.Entropy, {}, True),
}


class Batches(CalibrationDataReader):
    def __init__(self, images: np.ndarray) -> None:
        self.batches = iter(np.split(images, range(16, len(images), 16)))

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {"image": batch}


def speed(runner: OnnxRunner, seconds: float = 4.0) -> float:
    batch = np.random.default_rng(0).standard_normal(
        (16, *runner.data_config["input_size"]), dtype=np.float32)
    return runner_rate(runner, batch, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="a `prepare` output")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fp32, staged = Path(tmp) / "fp32.onnx", Path(tmp) / "staged.onnx"
        subprocess.run(["wastecls", "export", "-m", str(args.model), "--onnx", "--out",
                        str(fp32), "-q"], check=True)
        base = OnnxRunner(fp32)
        transform = eval_transform(base.data_config)
        val = list_images(args.data / "val")
        images = np.stack([transform(load_rgb(p)) for p in val])
        truth = np.array([base.classes.index(p.parent.name) for p in val])
        reference = base(images).argmax(1)
        train = list_images(args.data / "train")
        quant_pre_process(str(fp32), str(staged), skip_symbolic_shape=True)
        ends = stem_and_classifier_nodes(staged)
        print(f"fp32: val accuracy {(reference == truth).mean():.2%}, "
              f"{speed(base):.0f} img/s at batch 16\n")
        print("| calibration | agreement with fp32 | val accuracy | quantize s | img/s |\n"
              "|---|---|---|---|---|")
        for seed, (name, (count, method, extra, float_ends)) in enumerate(VARIANTS.items()):
            chosen = np.random.default_rng(seed).permutation(len(train))[:count]
            calibration = np.stack([transform(load_rgb(train[i])) for i in chosen])
            out = Path(tmp) / f"int8-{seed}.onnx"
            start = time.perf_counter()
            quantize_static(str(staged), str(out), Batches(calibration),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=method, extra_options=extra,
                            nodes_to_exclude=ends if float_ends else [])
            seconds = time.perf_counter() - start
            runner = OnnxRunner(out)
            predicted = runner(images).argmax(1)
            print(f"| {name} | {(predicted == reference).mean():.1%} | "
                  f"{(predicted == truth).mean():.2%} | {seconds:.0f} | "
                  f"{speed(runner):.0f} |", flush=True)


if __name__ == "__main__":
    main()
