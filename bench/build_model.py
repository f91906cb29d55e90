"""Rebuild the built-in waste model (`make model`) with wastecls' own commands.

1. TrashNet (`--data`, 2,527 photos) without the 72 photos of `samples/` (matched by class and
   file name: the samples are downscaled copies), so that the bundled sample stays an honest
   check the model never saw; and every `--more` source (garbage-v2: 9,911 web photos).
2. `wastecls prepare` of all sources with its defaults (each source split 70/10/20 on its own,
   stratified, seed 0; copies across sources kept in one split).
3. `wastecls train` with its defaults (the CPU recipe that `auto` resolves to), seed 0, from the
   ImageNet weights. A kept run is reused when its config.yaml holds what the defaults resolve
   to now; otherwise it is an error to delete it first.
4. `wastecls export --onnx` in fp32, `--half` (fp16 weights) and `--int8` (calibrated on the
   training split; export refuses it when it loses more than a point on the validation split);
   each is evaluated on the held-out test split and on `samples/`, and the smallest file within
   0.5 points of fp32's test accuracy is kept.
5. The chosen file goes to waste_cli/assets/models/waste-lite0.onnx, the checkpoint with fp16
   weights (what `train --weights waste-lite0` and `export` start from) to
   waste_cli/assets/models/waste-lite0.pt, the measurements to
   waste_cli/assets/models/waste-lite0.json (the model card's numbers: test accuracy per
   source, and in detect-waste's classes).

Training ends with the model's calibration (its temperature and unfamiliarity data); the fp32
file's calibration error and flags on the test split (and on `--other` photos of other things,
bench/other_photos.py) go to the card.

Usage: python bench/build_model.py --data ../shared/data/trashnet \
    --more ../shared/data/garbage-v2 \
    --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors --other bench/out/other
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import tempfile
from datetime import date
from pathlib import Path

import yaml
from common import add_data_arguments, default_settings

from waste_cli.model.backends import OnnxRunner
from waste_cli.model.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "trashnet-mini"  # the held-out check of the card
HELD_OUT = ROOT / "samples"  # every photo here is left out of training
TARGET = ROOT / "waste_cli" / "assets" / "models" / "waste-lite0.onnx"
RECIPE = ["--seed", "0"]  # the defaults: every tuning choice is `auto`
# The 2026-12-06 build ran the defaults (12 epochs) on 2 CPU cores and was shortened to this many
# at epoch 4 (`wastecls train --resume RUN --epochs 8`: the schedule re-planned) to fit the
# session; a kept run so shortened is accepted, and the card says so. None: the defaults only.
SHORTENED_TO: int | None = None
AUTO_RECORDED = ("arch", "img_size", "freeze_layers", "freeze_epochs", "aug", "cache", "amp",
                 "epochs", "ema", "lr", "layer_decay", "batch_size")


def check_kept_run(run: Path, data: Path, weights: Path) -> None:
    """A reused run must be what the defaults train today: compare its resolved config."""
    kept = yaml.safe_load((run / "config.yaml").read_text())["train"]
    now = default_settings(data, weights).model_dump(mode="json")
    ignored = {"data", "weights", "project", "name", "quiet", "workers", "resume"}
    if SHORTENED_TO is not None and kept.get("epochs") == SHORTENED_TO:
        ignored.add("epochs")
    differ = {k: (kept.get(k), v) for k, v in now.items() if k not in ignored and kept.get(k) != v}
    if differ:
        raise SystemExit(f"{run} was trained with other settings than today's defaults "
                         f"(kept, now): {differ}. Delete it to retrain.")


def write_checkpoint(best: Path, target: Path) -> None:
    """best.pt with fp16 weights (half the size; fine-tuning copies them into float32) and
    without the paths of this machine."""
    checkpoint = load_checkpoint(best)
    checkpoint["model"] = {k: v.half() if v.is_floating_point() else v
                           for k, v in checkpoint["model"].items()}
    record = checkpoint["options"]
    record["values"] = {**record["values"], "data": None, "weights": None, "project": None,
                        "resume": None}
    save_checkpoint(target, dict(checkpoint))


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["wastecls", *args], capture_output=True, text=True)
    if check and done.returncode:
        raise SystemExit(f"wastecls {' '.join(args)} failed:\n{done.stderr}")
    return done


def without_samples(data: Path, folder: Path) -> int:
    """Hard links to every photo of `data` except those in samples/ (by class folder and file
    name: the samples are copies); returns how many."""
    held_out = {(p.parent.name, p.name) for p in HELD_OUT.rglob("*.jpg")}
    kept = 0
    for photo in sorted(data.rglob("*.jpg")):
        if (photo.parent.name, photo.name) in held_out:
            continue
        target = folder / photo.parent.name / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(photo, target)
        kept += 1
    return kept


def report(model: Path, data: Path, split: str | None, *extra: str) -> dict:
    backend = "onnxruntime" if model.suffix == ".onnx" else "torch"  # no ONNX twin written
    args = ["evaluate", str(model), "--data", str(data), "--json", "--backend", backend]
    return json.loads(run(*args, *(["--split", split] if split else []), *extra).stdout)


def accuracy(model: Path, data: Path, split: str | None, *extra: str) -> float:
    return report(model, data, split, *extra)["accuracy"]


def per_source(model: Path, data: Path) -> dict:
    """Test accuracy per source, and in detect-waste's classes (the model's coarse view)."""
    fine = report(model, data, "test")
    coarse = report(model, data, "test", "--taxonomy", "detect-waste")
    return {"test_accuracy": fine["accuracy"],
            "per_source": {name: {"images": v["images"], "accuracy": v["accuracy"]}
                           for name, v in fine["per_source"].items()},
            "detect_waste": {"accuracy": coarse["accuracy"],
                             "per_source": {name: v["accuracy"]
                                            for name, v in coarse["per_source"].items()}}}


def confidence(model: Path, data: Path, other: Path | None) -> dict:
    """The calibration and the flags on the test split (and on photos of other things)."""
    done = report(model, data, "test", *(["--unfamiliar", str(other)] if other else []))
    card = {"temperature": done["temperature"], "ece": done["calibration"]["ece"],
            "ece_uncalibrated": done["uncalibrated"]["ece"],
            "test_flagged": done["flags"]["flagged"],
            "test_accuracy_unflagged": done["flags"]["accuracy_unflagged"]}
    if other:
        card |= {"other_photos": done["unfamiliar"]["images"],
                 "other_flagged": done["unfamiliar"]["flagged"],
                 "other_auroc": done["unfamiliar"]["auroc"]}
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--more", type=Path, nargs="*", default=[],
                        help="further class-folder sources merged with --data")
    parser.add_argument("--keep", type=Path, default=ROOT / "bench" / "out" / "waste_model_run",
                        help="the training run folder (reused when it holds a best.pt)")
    parser.add_argument("--other", type=Path, default=None,
                        help="photos of other things (bench/other_photos.py) for the flag")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources = [root / source.resolve().name for source in (args.data, *args.more)]
        photos = sum(without_samples(source, linked)
                     for source, linked in zip((args.data, *args.more), sources, strict=True))
        run("prepare", *map(str, sources), "--out", str(root / "data"), "-q")
        best = args.keep / "best.pt"
        if best.is_file():  # a kept run is reused: only the exports are redone
            check_kept_run(args.keep, root / "data", args.weights)
        else:
            run("train", "--data", str(root / "data"), "--weights", str(args.weights),
                "--project", str(args.keep.parent), "--name", args.keep.name, "-q", *RECIPE)
        # Every epoch's time, a resumed run's included (summary.json counts its last process).
        with open(args.keep / "metrics.csv", newline="") as handle:
            seconds = round(sum(float(row["seconds"]) for row in csv.DictReader(handle)))
        exports = {"fp32": [], "fp16": ["--half"],
                   "int8": ["--int8", "--calib-data", str(root / "data" / "train")]}
        card: dict = {"built": str(date.today()), "training_photos": photos,
                      "train_seconds": seconds, "recipe": RECIPE, "formats": {},
                      "shortened_to_epochs": SHORTENED_TO}
        resolved = yaml.safe_load((args.keep / "config.yaml").read_text())["train"]
        card["resolved"] = {k: resolved[k] for k in AUTO_RECORDED}
        files = {}
        for name, flags in exports.items():
            path = root / f"{name}.onnx"
            done = run("export", "-m", str(best), "--onnx", *flags, "--out", str(path), "-q",
                       "--verify-data", str(root / "data" / "val"),
                       check=name == "fp32")
            if done.returncode:
                card["formats"][name] = {"refused": " ".join(done.stderr.split())}
                continue
            files[name] = path
            card["formats"][name] = {
                "megabytes": round(path.stat().st_size / 2**20, 1),
                "test_accuracy": accuracy(path, root / "data", "test"),
                # The sample holds 6 of the model's classes: an answer in another is wrong.
                "samples_accuracy": accuracy(path, SAMPLES, None, "--allow-subset"),
            }
        card["confidence"] = confidence(files["fp32"], root / "data", args.other)
        card["sources"] = [args.data.resolve().name, *(p.resolve().name for p in args.more)]
        reference = card["formats"]["fp32"]["test_accuracy"]
        fine = [n for n in files if reference - card["formats"][n]["test_accuracy"] <= 0.005]
        card["chosen"] = min(fine, key=lambda n: card["formats"][n]["megabytes"])
        card["classes"] = OnnxRunner(files["fp32"]).classes
        TARGET.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(files[card["chosen"]], TARGET)
        write_checkpoint(best, TARGET.with_suffix(".pt"))
        card["checkpoint_megabytes"] = round(TARGET.with_suffix(".pt").stat().st_size / 2**20, 1)
        card["checkpoint_samples_accuracy"] = accuracy(TARGET.with_suffix(".pt"), SAMPLES, None,
                                                       "--allow-subset")
        card["shipped"] = per_source(TARGET, root / "data")
        TARGET.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
        print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
