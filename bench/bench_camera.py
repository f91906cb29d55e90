"""Camera-sized photos: `wastecls predict` end to end against the model alone, and what decoding
for size changes in the model's answers.

1. Photos with known labels at camera size: TrashNet's test split (default prepare split, seed
   0), `--per-class` photos per class, upscaled to 4032x3024 (12 MP) and saved as JPEG q92 —
   real photos at a camera's size, though not a camera's detail.
2. Answers of the model (onnxruntime) with the product's decode-for-size path and with a full
   decode, in this process: top-1 agreement and accuracy of each.
3. `--rounds` rounds of: the model-only rate of the same backend (onnxruntime, one
   single-threaded session per core, at whichever of batch 1 and 2 ran faster here), `wastecls
   predict DIR --format csv --output F` end to end (process start included), the model-only
   rate again. Each round's ratio (end to end over the mean of the two model-only rates), their
   median, and predict's Speed line.

Usage: python bench/bench_camera.py --model bench/out/train_run/seed0/best.pt \
    --data ../shared/data/trashnet [--per-class 20 --rounds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import re
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from common import split_and_onnx
from PIL import Image

from waste_cli.data.scan import class_folders, class_samples
from waste_cli.model.backends import OnnxRunner

CAMERA = (4032, 3024)


def camera_set(test: Path, folder: Path, per_class: int) -> list[tuple[Path, int]]:
    classes = class_folders(test)
    samples = class_samples(test, {c: i for i, c in enumerate(classes)})
    chosen: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        for path, _ in [s for s in samples if s[1] == index][:per_class]:
            target = folder / name / f"{path.stem}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            photo = Image.open(path).convert("RGB")
            size = CAMERA if photo.width >= photo.height else CAMERA[::-1]
            photo.resize(size, Image.Resampling.BICUBIC).save(target, quality=92)
            chosen.append((target, index))
    return chosen


def answers(model: Path, samples: list[tuple[Path, int]], full_decode: bool) -> np.ndarray:
    from waste_cli.data.batching import EvalImages

    runner = OnnxRunner(model)
    images = EvalImages(samples, runner.data_config)
    if full_decode:
        images.short = 0  # decode every pixel, as before decoding for size
    out = []
    for start in range(0, len(samples), 8):
        batch, _, _, bad = images.batch(list(range(start, min(start + 8, len(samples)))))
        assert not bad
        out.append(runner(batch).argmax(1))
    return np.concatenate(out)


def _model_only_worker(model: str, shape: tuple[int, ...], size: int, seconds: float,
                       queue) -> None:
    runner = OnnxRunner(Path(model), threads=1)
    batch = np.random.default_rng(0).standard_normal((size, *shape)).astype(np.float32)
    runner(batch)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        runner(batch)
        done += size
    queue.put(done / (time.perf_counter() - start))


def model_only(model: Path, batch: int, seconds: float = 10.0) -> float:
    """Images/s of one single-threaded onnxruntime session per core, summed."""
    shape = tuple(OnnxRunner(model).data_config["input_size"])
    queue: multiprocessing.Queue = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_model_only_worker,
                                       args=(str(model), shape, batch, seconds, queue))
               for _ in range(os.cpu_count() or 1)]
    for worker in workers:
        worker.start()
    rates = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a best.pt")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/trashnet"))
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"# camera-size benchmark, {date.today()}, {os.cpu_count()} cores "
          f"{platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _, onnx = split_and_onnx(args.data, args.model, root)
        samples = camera_set(root / "data" / "test", root / "camera", args.per_class)
        labels = np.array([label for _, label in samples])
        fast, full = answers(onnx, samples, False), answers(onnx, samples, True)
        print(f"\n{len(samples)} photos of {CAMERA[0]}x{CAMERA[1]} "
              f"(up to {args.per_class} per class of the test split)\n")
        print("| decode | accuracy | top-1 agreement with full decode |\n|---|---|---|")
        print(f"| full (every pixel) | {(full == labels).mean():.2%} | - |")
        print(f"| for size (product) | {(fast == labels).mean():.2%} | "
              f"{(fast == full).mean():.2%} |")
        batch = max((1, 2), key=lambda size: model_only(onnx, size))
        rounds = []
        for _ in range(args.rounds):
            before = model_only(onnx, batch)
            start = time.perf_counter()
            done = subprocess.run(["wastecls", "predict", "-m", str(onnx), str(root / "camera"),
                                   "--format", "csv", "--output", str(root / "out.csv")],
                                  capture_output=True, text=True, check=True)
            rate = len(samples) / (time.perf_counter() - start)
            reference = (before + model_only(onnx, batch)) / 2
            speed = re.search(r"Speed:.*", " ".join(done.stderr.split()))
            rounds.append((rate, reference, speed.group(0) if speed else "(none)"))
        print(f"\n`wastecls predict` end to end (process start included) against the model "
              f"alone (onnxruntime, {os.cpu_count()} x 1 thread, batch {batch}, the faster of 1 "
              f"and 2), measured before and after each run:\n")
        print("| round | end to end img/s | model alone img/s | ratio | predict's Speed line |")
        print("|---|---|---|---|---|")
        for k, (rate, reference, speed) in enumerate(rounds, 1):
            print(f"| {k} | {rate:.1f} | {reference:.1f} | {rate / reference:.2f} | {speed} |")
        ratios = sorted(rate / reference for rate, reference, _ in rounds)
        print(f"\n- median ratio end to end / model alone: **{ratios[len(ratios) // 2]:.2f}** "
              f"(range {ratios[0]:.2f}-{ratios[-1]:.2f})")


if __name__ == "__main__":
    main()
