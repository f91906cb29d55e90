"""The detector's second stage at work: boxes/s of `wastecls predict --boxes` on camera-sized
photos holding several boxes each, against predicting the same crops cut beforehand, and
against a per-box loop (open, crop, transform, model, next).

Scenes: `--scenes` canvases of 4032x3024 (JPEG q92), each holding `--boxes` TrashNet test
photos (default prepare split, seed 0) pasted at 500-900 px, annotated as COCO boxes with
their class. The model is a best.pt, exported to ONNX and run on onnxruntime in all three.

Usage: python bench/bench_boxes.py --model bench/out/train_run/seed0/best.pt \
    --data ../shared/data/trashnet [--scenes 30 --boxes 5 --rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from common import split_and_onnx
from PIL import Image

from waste_cli.data.coco import crop_box
from waste_cli.data.scan import class_folders, class_samples
from waste_cli.data.sources import cut_box, load_rgb
from waste_cli.data.transforms import eval_transform
from waste_cli.model.backends import OnnxRunner

CAMERA = (4032, 3024)


def scenes(test: Path, folder: Path, count: int, per_scene: int) -> tuple[Path, list[str]]:
    """Camera-sized canvases of real photos at known boxes, and their COCO annotations."""
    classes = class_folders(test)
    samples = class_samples(test, {c: i for i, c in enumerate(classes)})
    rng = random.Random(0)
    coco: dict = {"images": [], "annotations": [],
                  "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]}
    folder.mkdir(parents=True)
    for s in range(count):
        canvas = Image.new("RGB", CAMERA, (rng.randint(90, 200),) * 3)
        for k in range(per_scene):
            path, label = samples[rng.randrange(len(samples))]
            side = rng.randint(500, 900)
            x, y = 40 + k * (CAMERA[0] - 80) // per_scene, rng.randint(40, CAMERA[1] - side - 40)
            canvas.paste(Image.open(path).convert("RGB").resize((side, side)), (x, y))
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": s + 1,
                                        "category_id": label + 1, "bbox": [x, y, side, side],
                                        "score": 0.9})
        canvas.save(folder / f"scene{s:03}.jpg", quality=92)
        coco["images"].append({"id": s + 1, "file_name": f"scene{s:03}.jpg",
                               "width": CAMERA[0], "height": CAMERA[1]})
    annotations = folder.parent / "annotations.json"
    annotations.write_text(json.dumps(coco))
    return annotations, classes


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, " ".join(done.stderr.split())


def per_box_loop(onnx: Path, annotations: Path, images: Path, crop_size: int) -> float:
    """The obvious script: for each box, open its photo, crop, transform, run the model."""
    runner = OnnxRunner(onnx)
    transform = eval_transform(runner.data_config)
    coco = json.loads(annotations.read_text())
    files = {i["id"]: images / i["file_name"] for i in coco["images"]}
    start = time.perf_counter()
    for ann in coco["annotations"]:
        photo = load_rgb(files[ann["image_id"]])
        crop = cut_box(photo, photo.size, crop_box(ann["bbox"], False, 1.0), size=crop_size)
        runner(transform(crop)[None])
    return time.perf_counter() - start


def accuracy(csv_file: Path, annotations: Path, classes: list[str]) -> float:
    coco = json.loads(annotations.read_text())
    truth = {(a["image_id"], tuple(a["bbox"])): classes[a["category_id"] - 1]
             for a in coco["annotations"]}
    files = {i["file_name"]: i["id"] for i in coco["images"]}
    with open(csv_file, newline="") as handle:
        rows = list(csv.DictReader(handle))
    hits = [truth[(files[Path(r["image"]).name], tuple(int(float(r[k])) for k in "xywh"))]
            == r["label1"] for r in rows]
    return float(np.mean(hits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a best.pt")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/trashnet"))
    parser.add_argument("--scenes", type=int, default=30)
    parser.add_argument("--boxes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"# second-stage benchmark, {date.today()}, {os.cpu_count()} cores "
          f"{platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _, onnx = split_and_onnx(args.data, args.model, root)
        annotations, classes = scenes(root / "data" / "test", root / "scenes", args.scenes,
                                      args.boxes)
        boxes = args.scenes * args.boxes
        crop_size = int(OnnxRunner(onnx).crop.get("size", 0))
        # Pre-cut crops, as a user with their own cropping script would have them.
        subprocess.run(["wastecls", "prepare", str(annotations), "--images",
                        str(root / "scenes"), "--out", str(root / "crops"), "--size",
                        str(crop_size), "--val-frac", "0", "--test-frac", "0", "-q"],
                       check=True, capture_output=True)
        rounds = []  # (second stage, its line, pre-cut crops, their line), run back to back
        for _ in range(args.rounds):
            rounds.append((*timed(["wastecls", "predict", "-m", str(onnx), "--boxes",
                                   str(annotations), "--images", str(root / "scenes"),
                                   "--format", "csv", "--output", str(root / "boxes.csv")]),
                           *timed(["wastecls", "predict", "-m", str(onnx),
                                   str(root / "crops" / "train"), "--format", "csv",
                                   "--output", str(root / "crops.csv")])))
        rounds.sort(key=lambda r: r[2] / r[0])
        stage, stage_line, precut, precut_line = rounds[len(rounds) // 2]  # the median ratio
        loop = per_box_loop(onnx, annotations, root / "scenes", crop_size)
        print(f"\n{args.scenes} photos of {CAMERA[0]}x{CAMERA[1]}, {args.boxes} boxes each "
              f"({boxes} boxes of 500-900 px); crop size {crop_size}\n")
        print("| way | seconds | boxes/s |\n|---|---|---|")
        for name, seconds in (("`predict --boxes` (one decode per photo, reduced)", stage),
                              ("`predict` on the same crops cut beforehand", precut),
                              ("per-box loop (open, crop, transform, model)", loop)):
            print(f"| {name} | {seconds:.1f} | {boxes / seconds:.1f} |")
        print(f"\n- second stage / pre-cut crops: **{precut / stage:.2f}**, the median of "
              f"{len(rounds)} rounds run back to back (range {rounds[0][2] / rounds[0][0]:.2f}-"
              f"{rounds[-1][2] / rounds[-1][0]:.2f}); / per-box loop: **{loop / stage:.2f}**")
        print(f"- accuracy of the second stage on its boxes: "
              f"{accuracy(root / 'boxes.csv', annotations, classes):.2%}")
        print(f"- `predict --boxes`: {stage_line[stage_line.find('Speed:'):]}")
        print(f"- `predict` on crops: {precut_line[precut_line.find('Speed:'):]}")


if __name__ == "__main__":
    main()
