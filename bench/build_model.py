"""Rebuild the built-in waste model (`make model`) with wastecls' own commands.

1. TrashNet (`--data`, 2,527 photos) without the 72 photos of `samples/` (matched by class and
   file name: the samples are downscaled copies), so that the bundled sample stays an honest
   check the model never saw.
2. `wastecls prepare` with its defaults (stratified 70/10/20 split, seed 0).
3. `wastecls train` with the CPU recipe of BENCHMARKS.md, seed 0, from the ImageNet weights.
4. `wastecls export --onnx` in fp32, `--half` (fp16 weights) and `--int8` (calibrated on the
   training split; export refuses it when it loses more than a point on the validation split);
   each is evaluated on the held-out test split and on `samples/`, and the smallest file within
   0.5 points of fp32's test accuracy is kept.
5. The chosen file goes to waste_cli/models/trashnet-lite0.onnx, its measurements to
   waste_cli/models/trashnet-lite0.json (the model card's numbers).

Usage: python bench/build_model.py --data ../shared/data/trashnet \
    --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

from common import add_data_arguments

from waste_cli.backends import OnnxRunner

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "trashnet-mini"
TARGET = ROOT / "waste_cli" / "models" / "trashnet-lite0.onnx"
RECIPE = ["--arch", "efficientnet-lite0", "--img-size", "288", "--freeze-layers", "6",
          "--epochs", "12", "--ema", "--lr", "1e-3", "--layer-decay", "0.7", "--aug", "light",
          "--cache", "ram", "--batch-size", "32", "--seed", "0"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["wastecls", *args], capture_output=True, text=True)
    if check and done.returncode:
        raise SystemExit(f"wastecls {' '.join(args)} failed:\n{done.stderr}")
    return done


def without_samples(data: Path, folder: Path) -> int:
    """Hard links to every photo of `data` except those in samples/; returns how many."""
    held_out = {(p.parent.name, p.name) for p in SAMPLES.rglob("*.jpg")}
    kept = 0
    for photo in sorted(data.rglob("*.jpg")):
        if (photo.parent.name, photo.name) in held_out:
            continue
        target = folder / photo.parent.name / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(photo, target)
        kept += 1
    return kept


def accuracy(model: Path, data: Path, split: str | None) -> float:
    args = ["evaluate", str(model), "--data", str(data), "--json", "--backend", "onnxruntime"]
    report = json.loads(run(*args, *(["--split", split] if split else [])).stdout)
    return report["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--keep", type=Path, default=ROOT / "bench" / "out" / "model_run",
                        help="the training run folder (reused when it holds a best.pt)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = without_samples(args.data, root / "raw")
        run("prepare", str(root / "raw"), "--out", str(root / "data"), "-q")
        best = args.keep / "best.pt"
        seconds = None
        if not best.is_file():  # a kept run is reused: only the exports are redone
            start = time.perf_counter()
            run("train", "--data", str(root / "data"), "--weights", str(args.weights),
                "--project", str(args.keep.parent), "--name", args.keep.name, "-q", *RECIPE)
            seconds = round(time.perf_counter() - start)
        exports = {"fp32": [], "fp16": ["--half"],
                   "int8": ["--int8", "--calib-data", str(root / "data" / "train")]}
        card: dict = {"built": str(date.today()), "training_photos": photos,
                      "train_seconds": seconds, "recipe": RECIPE, "formats": {}}
        files = {}
        for name, flags in exports.items():
            path = root / f"{name}.onnx"
            done = run("export", "-m", str(best), "--onnx", *flags, "--out", str(path), "-q",
                       check=name == "fp32")
            if done.returncode:
                card["formats"][name] = {"refused": " ".join(done.stderr.split())}
                continue
            files[name] = path
            card["formats"][name] = {
                "megabytes": round(path.stat().st_size / 2**20, 1),
                "test_accuracy": accuracy(path, root / "data", "test"),
                "samples_accuracy": accuracy(path, SAMPLES, None),
            }
        reference = card["formats"]["fp32"]["test_accuracy"]
        fine = [n for n in files if reference - card["formats"][n]["test_accuracy"] <= 0.005]
        card["chosen"] = min(fine, key=lambda n: card["formats"][n]["megabytes"])
        card["classes"] = OnnxRunner(files["fp32"]).classes
        TARGET.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(files[card["chosen"]], TARGET)
        TARGET.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
        print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
