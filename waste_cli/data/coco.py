"""COCO detection annotations -> crop jobs, one source image at a time.

Every box becomes one crop of its (mapped) class. Nothing in the annotation file is trusted: boxes
without area, unknown image ids and file names that leave the image folder are skipped and
reported, never followed.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from waste_cli.data.sources import Box, CropJob, SourceImage
from waste_cli.data.taxonomy import ClassMap
from waste_cli.errors import DataError

__all__ = ["BACKGROUND", "coco_sources", "crop_box"]

BACKGROUND = "background"
BACKGROUND_MAX_IOU = 0.05


def crop_box(bbox: list[float], square: bool, zoom: float) -> Box:
    """A COCO [x, y, w, h] box as (x0, y0, x1, y1), squared and zoomed around its centre."""
    x, y, w, h = bbox
    if square:
        w = h = max(w, h)
    w, h = w * zoom, h * zoom
    cx, cy = x + bbox[2] / 2, y + bbox[3] / 2
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _background_boxes(
    size: tuple[int, int], boxes: list[Box], count: int, min_size: int, rng: random.Random
) -> list[Box]:
    """Up to `count` random boxes, sized like the annotated ones, that overlap none of them."""
    width, height = size
    sides = [max(b[2] - b[0], b[3] - b[1]) for b in boxes] or [min(width, height) / 3]
    found: list[Box] = []
    for _ in range(count * 50):
        if len(found) == count:
            break
        side = min(max(rng.choice(sides), min_size), width, height)
        x0, y0 = rng.uniform(0, width - side), rng.uniform(0, height - side)
        box = (x0, y0, x0 + side, y0 + side)
        if all(_iou(box, other) < BACKGROUND_MAX_IOU for other in boxes + found):
            found.append(box)
    return found


def _safe_image_path(images: Path, file_name: str) -> Path | None:
    """The image's path inside `images`, or None when the name would escape that folder."""
    if not file_name or Path(file_name).is_absolute():
        return None
    root = images.resolve()
    path = (root / file_name).resolve()
    return path if path.is_relative_to(root) else None


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"Cannot read COCO annotations {path}: {exc}") from exc
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= data.keys():
        raise DataError(
            f"{path} is not a COCO detection file: it needs 'images', 'annotations' and "
            "'categories' lists."
        )
    return data


def coco_sources(
    path: Path,
    images: Path,
    class_map: ClassMap,
    *,
    square: bool,
    zoom: float,
    background: int,
    min_size: int,
    seed: int,
) -> tuple[list[SourceImage], list[dict[str, Any]]]:
    """Crop jobs grouped by source image, and the skipped annotations with their reasons."""
    data = _load(path)
    categories = {c["id"]: str(c["name"]) for c in data["categories"]}
    image_info = {img["id"]: img for img in data["images"]}
    skipped: list[dict[str, Any]] = []
    crops: dict[Any, list[CropJob]] = defaultdict(list)
    boxes: dict[Any, list[Box]] = defaultdict(list)

    for ann in data["annotations"]:
        ann_id, image_id = ann.get("id"), ann.get("image_id")
        bbox = ann.get("bbox") or []
        if image_id not in image_info:
            skipped.append({"annotation": ann_id, "reason": f"unknown image id {image_id!r}"})
            continue
        if len(bbox) != 4 or bbox[2] <= 0 or bbox[3] <= 0:
            skipped.append({"annotation": ann_id, "reason": f"box without area {bbox!r}"})
            continue
        box = crop_box(bbox, square, zoom)
        boxes[image_id].append(box)
        label = class_map(categories.get(ann.get("category_id"), "unknown"))
        if label is None:
            continue  # an ignored category: its box still blocks background crops
        stem = Path(image_info[image_id]["file_name"]).stem
        crops[image_id].append(CropJob(label, box, f"{stem}_{ann_id}"))

    sources = []
    for image_id in sorted(image_info, key=str):
        info = image_info[image_id]
        file_name = str(info.get("file_name", ""))
        jobs = list(crops.get(image_id, []))
        if background and info.get("width") and info.get("height"):
            rng = random.Random(f"{seed}:{image_id}")
            size = (int(info["width"]), int(info["height"]))
            for k, box in enumerate(_background_boxes(size, boxes[image_id], background,
                                                      min_size, rng)):
                jobs.append(CropJob(BACKGROUND, box, f"{Path(file_name).stem}_bg{k}"))
        if not jobs:
            continue
        image_path = _safe_image_path(images, file_name)
        if image_path is None:
            skipped.append({"image": file_name, "reason": "file name escapes the image folder"})
            continue
        sources.append(SourceImage(image_path, tuple(jobs)))
    return sources, skipped
