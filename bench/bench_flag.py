"""What the unfamiliar flag costs `predict`: the same checkpoint exported with its calibration
(the score computed inside the ONNX file) and without it, run alternately in one session:
`wastecls predict` end to end on a folder, and the ONNX model alone on a fixed batch.

Usage: python bench/bench_flag.py --model best.pt --images ../shared/data/trashnet [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from common import runner_rate

from waste_cli.data.scan import list_images
from waste_cli.model.backends import OnnxRunner
from waste_cli.model.checkpoint import load_checkpoint, save_checkpoint


def export(checkpoint: Path, target: Path) -> None:
    subprocess.run(["wastecls", "export", "-m", str(checkpoint), "-o", str(target), "-q"],
                   check=True, capture_output=True)


def predict_rate(model: Path, images: Path, output: Path) -> float:
    count = len(list_images(images))
    start = time.perf_counter()
    subprocess.run(["wastecls", "predict", "-m", str(model), str(images), "--format", "csv",
                    "--output", str(output), "-q"], check=True, capture_output=True)
    return count / (time.perf_counter() - start)


def model_rate(model: Path, batch: np.ndarray) -> float:
    return runner_rate(OnnxRunner(model), batch, seconds=10.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a calibrated best.pt")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.model)
    if checkpoint.get("calibration") is None:
        raise SystemExit(f"{args.model} is not calibrated: nothing to compare")
    print(f"# flag cost, {date.today()}, {os.cpu_count()} cores {platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plain = root / "plain" / "best.pt"
        plain.parent.mkdir()
        del checkpoint["calibration"], checkpoint["familiar_features"]
        save_checkpoint(plain, dict(checkpoint))
        files = {"with flag": root / "flag.onnx", "without": root / "plain.onnx"}
        export(args.model, files["with flag"])
        export(plain, files["without"])
        size = {k: v.stat().st_size / 2**20 for k, v in files.items()}
        shape = OnnxRunner(files["without"]).data_config["input_size"]
        batch = np.random.default_rng(0).normal(size=(32, *shape)).astype(np.float32)
        rates: dict[str, dict[str, list[float]]] = {k: {"predict": [], "model": []}
                                                    for k in files}
        for _ in range(args.rounds):  # alternate: the machine's drift hits both alike
            for name, path in files.items():
                rates[name]["predict"].append(predict_rate(path, args.images, root / "out.csv"))
                rates[name]["model"].append(model_rate(path, batch))
    for kind in ("predict", "model"):
        flagged = statistics.median(rates["with flag"][kind])
        plain_rate = statistics.median(rates["without"][kind])
        print(f"{kind:8s} with flag {flagged:7.1f} img/s, without {plain_rate:7.1f} img/s: "
              f"{flagged / plain_rate:.3f}")
    print(f"file size: with flag {size['with flag']:.2f} MB, without {size['without']:.2f} MB "
          f"(+{size['with flag'] - size['without']:.2f} MB)")


if __name__ == "__main__":
    main()
