"""COCO detection annotations -> crop jobs, one source image at a time.

Every box becomes one crop of its (mapped) class. Nothing in the annotation file is trusted:
malformed, non-numeric or empty boxes, unknown or duplicate ids, missing file names and file
names that leave the image folder are skipped and reported with their reason, never followed.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from waste_cli.core.errors import DataError
from waste_cli.core.formats import read_structured
from waste_cli.core.names import name_problem
from waste_cli.data.sources import Box, CropJob, SourceImage
from waste_cli.data.taxonomy import ClassMap

__all__ = ["BACKGROUND", "coco_sources", "crop_box", "id_key", "parse_bbox", "safe_image_path"]

BACKGROUND = "background"
BACKGROUND_MAX_IOU = 0.05
MAX_COORDINATE = 2**31  # Pillow's limit on an image's side: any box beyond lies outside


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


def safe_image_path(images: Path, file_name: str) -> Path | None:
    """The image's path inside `images`, or None when the name would escape that folder."""
    if not file_name or "\x00" in file_name or Path(file_name).is_absolute():
        return None
    root = images.resolve()
    path = (root / file_name).resolve()
    return path if path.is_relative_to(root) else None


def _load(path: Path) -> dict[str, Any]:
    try:
        data = read_structured(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot read COCO annotations {path}: {exc}. Give a COCO detection "
                        "JSON file (images, annotations, categories).") from None
    lists = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in lists):
        raise DataError(
            f"{path} is not a COCO detection file: it needs 'images', 'annotations' and "
            "'categories' lists."
        )
    return data


def id_key(value: Any) -> Any:
    """An id usable as a dict key (ids are ints or strings in the wild), else None."""
    return value if isinstance(value, int | str) and not isinstance(value, bool) else None


def parse_bbox(bbox: Any) -> tuple[list[float] | None, str]:
    """A COCO [x, y, w, h] as four finite floats with area, or None and why not."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return None, f"bbox is not [x, y, width, height]: {bbox!r}"
    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError, OverflowError):
        return None, f"non-numeric bbox {bbox!r}"
    if any(isinstance(v, bool) for v in bbox) or not all(math.isfinite(v) for v in values):
        return None, f"non-numeric or non-finite bbox {bbox!r}"
    if any(abs(v) > MAX_COORDINATE for v in values):
        return None, f"bbox beyond any image's size {bbox!r}"
    if values[2] <= 0 or values[3] <= 0:
        return None, f"box without area {bbox!r}"
    return values, ""


def _index(items: list[Any], what: str, skipped: list[dict[str, Any]]) -> dict[Any, dict]:
    """id -> entry for COCO images or categories; malformed and repeated ids are reported."""
    index: dict[Any, dict] = {}
    for item in items:
        key = id_key(item.get("id")) if isinstance(item, dict) else None
        if key is None:
            skipped.append({what: repr(item)[:200], "reason": f"{what} entry without a valid id"})
        elif key in index:
            skipped.append({what: key, "reason": f"duplicate {what} id (the first is used)"})
        else:
            index[key] = item
    return index


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
    """Crop jobs grouped by source image, and every skipped entry with its reason."""
    data = _load(path)
    skipped: list[dict[str, Any]] = []
    categories = {k: str(c.get("name", k)) for k, c in
                  _index(data["categories"], "category", skipped).items()}
    image_info = _index(data["images"], "image", skipped)
    crops: dict[Any, list[CropJob]] = defaultdict(list)
    boxes: dict[Any, list[Box]] = defaultdict(list)
    seen_ids: set[Any] = set()
    annotation_ids: dict[Any, list[Any]] = defaultdict(list)  # of each image's crops

    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            skipped.append({"annotation": repr(ann)[:200], "reason": "not a JSON object"})
            continue
        ann_id, image_id = ann.get("id"), id_key(ann.get("image_id"))
        if id_key(ann_id) is not None and ann_id in seen_ids:
            skipped.append({"annotation": ann_id, "reason": "duplicate annotation id"})
            continue
        seen_ids.add(ann_id)
        if image_id not in image_info:
            skipped.append({"annotation": ann_id,
                            "reason": f"unknown image id {ann.get('image_id')!r}"})
            continue
        bbox, why = parse_bbox(ann.get("bbox"))
        if bbox is None:
            skipped.append({"annotation": ann_id, "reason": why})
            continue
        category = id_key(ann.get("category_id"))
        if category not in categories:
            skipped.append({"annotation": ann_id,
                            "reason": f"unknown category id {ann.get('category_id')!r}"})
            continue
        box = crop_box(bbox, square, zoom)
        boxes[image_id].append(box)
        label = class_map.target(categories[category],
                                 f"category {category!r} of {path}")
        if label is None:
            continue  # an ignored category: its box still blocks background crops
        stem = Path(str(image_info[image_id].get("file_name") or image_id)).stem
        crop_name = f"{stem}_{ann_id}"
        if name_problem(crop_name + ".jpg") is not None:
            skipped.append({"annotation": ann_id, "reason": f"its crop's file name {crop_name!r} "
                            f"cannot be a file name: {name_problem(crop_name + '.jpg')}"})
            continue
        crops[image_id].append(CropJob(label, box, crop_name))
        annotation_ids[image_id].append(ann_id)

    sources = []
    for image_id in sorted(image_info, key=str):
        info = image_info[image_id]
        jobs = list(crops.get(image_id, []))
        file_name = info.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            if jobs:
                skipped.append({"image": image_id, "annotations": annotation_ids[image_id],
                                "reason": f"missing or invalid file_name {file_name!r}"})
            continue
        size = _declared_size(info)
        if background and size:
            rng = random.Random(f"{seed}:{image_id}")
            for k, box in enumerate(_background_boxes(size, boxes[image_id], background,
                                                      min_size, rng)):
                name = f"{Path(file_name).stem}_bg{k}"
                if name_problem(name + ".jpg") is None:
                    jobs.append(CropJob(BACKGROUND, box, name))
        if not jobs:
            continue
        image_path = safe_image_path(images, file_name)
        if image_path is None:
            skipped.append({"image": file_name, "annotations": annotation_ids[image_id],
                            "reason": "file name escapes the image folder"})
            continue
        sources.append(SourceImage(image_path, tuple(jobs)))
    return sources, skipped


def _declared_size(info: dict[str, Any]) -> tuple[int, int] | None:
    """The image's width and height as the annotation file states them, if usable."""
    try:
        width, height = int(info["width"]), int(info["height"])
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    return (width, height) if width > 0 and height > 0 else None
