"""A litter detector's boxes, read from the files detectors write: COCO annotations, COCO results
(with the images named by a COCO file) and YOLO label folders (Ultralytics' `save_txt`).

Nothing is trusted: malformed boxes and lines, unknown image ids, missing images and file
names that leave the image folder are skipped and returned with their reason, as `prepare`
does for its own COCO input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from waste_cli.core.errors import DataError
from waste_cli.core.formats import read_structured
from waste_cli.data.coco import crop_box, id_key, parse_bbox, safe_image_path
from waste_cli.data.scan import list_images
from waste_cli.data.sources import Box

__all__ = ["Detection", "Region", "read_detections"]


@dataclass(frozen=True)
class Region:
    """A box on an image: COCO x, y, width, height in pixels, or (YOLO) centre x, centre y,
    width, height as fractions of the image's width and height."""

    box: tuple[float, float, float, float]
    normalized: bool = False

    def corners(self, full_size: tuple[int, int], square: bool, zoom: float) -> Box:
        """x0 y0 x1 y1 in pixels of the full image, squared and zoomed as `prepare` crops."""
        x, y, w, h = self.box
        if self.normalized:
            width, height = full_size
            x, y, w, h = (x - w / 2) * width, (y - h / 2) * height, w * width, h * height
        return crop_box([x, y, w, h], square, zoom)


@dataclass(frozen=True)
class Detection:
    """One box to classify, and what the detector said of it (kept in the output)."""

    image: Path
    region: Region
    score: float | None = None
    category: str | None = None  # the annotation's or the detector's class name, if any
    record: dict[str, Any] = field(default_factory=dict)


def read_detections(source: Path, images: Path, coco_images: Path | None = None
                    ) -> tuple[list[Detection], list[dict[str, Any]]]:
    """The boxes of `source` on the images under `images`, and the skipped ones with reasons.

    `source` is a COCO annotation file, a COCO results file (a list of {image_id, bbox, score})
    whose images are named by `coco_images` (a COCO file with an `images` list), or a folder of
    YOLO label files (`class cx cy w h [conf]`, one .txt per image, matched by stem).
    """
    if not images.is_dir():
        raise DataError(f"Image folder {images} does not exist. Say where the detector's images "
                        "are with --images DIR.")
    if source.is_dir():
        return _yolo(source, images)
    data = _read_json(source)
    if isinstance(data, list):
        if coco_images is None:
            raise DataError(f"{source} is a COCO results file (a list of boxes): name its "
                            "images with --coco-images FILE (a COCO file with an 'images' list).")
        return _coco(data, _image_names(coco_images), images, source)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list) and isinstance(
            data.get("images"), list):
        if coco_images is not None:
            data = {**data, "images": _image_names(coco_images)["images"]}
        return _coco(data["annotations"], data, images, source)
    raise DataError(f"{source} is neither COCO annotations (images, annotations), COCO results "
                    "(a list of boxes) nor a folder of YOLO label files.")


def _read_json(path: Path) -> Any:
    try:
        return read_structured(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot read {path}: {exc}. Give a COCO JSON file or a folder of YOLO "
                        "label files.") from None


def _image_names(path: Path) -> dict[str, Any]:
    """The COCO file that names the images of a results file (--coco-images)."""
    names = _read_json(path)
    if not isinstance(names, dict) or not isinstance(names.get("images"), list):
        raise DataError(f"{path} has no 'images' list to name the boxes' images. Give the COCO "
                        "file the detector ran on (e.g. instances_val.json) as --coco-images.")
    return names


def _coco(boxes: list[Any], named: dict[str, Any], images: Path, source: Path
          ) -> tuple[list[Detection], list[dict[str, Any]]]:
    skipped: list[dict[str, Any]] = []
    files: dict[Any, Any] = {}
    for entry in named.get("images", []):
        key = id_key(entry.get("id")) if isinstance(entry, dict) else None
        if key is not None and key not in files:
            files[key] = entry.get("file_name")
    if not isinstance(named.get("categories", []), list):
        raise DataError(f"{source}: 'categories' is not a list of {{id, name}} objects. Fix it, "
                        "or leave it out: the classifier names the boxes.")
    categories = {id_key(c.get("id")): str(c.get("name")) for c in named.get("categories", [])
                  if isinstance(c, dict) and id_key(c.get("id")) is not None}
    found: list[Detection] = []
    for number, item in enumerate(boxes):
        if not isinstance(item, dict):
            skipped.append({"box": number, "reason": "not a JSON object"})
            continue
        where = {"box": item.get("id", number)}
        image_id = id_key(item.get("image_id"))
        if image_id not in files:
            skipped.append(where | {"reason": f"unknown image id {item.get('image_id')!r}"})
            continue
        file_name = files[image_id]
        path = safe_image_path(images, file_name) if isinstance(file_name, str) else None
        if path is None:
            skipped.append(where | {"reason": f"file name {file_name!r} is missing or leaves "
                                              f"{images}"})
            continue
        bbox, why = parse_bbox(item.get("bbox"))
        if bbox is None:
            skipped.append(where | {"reason": why})
            continue
        score = item.get("score")
        if score is not None and not _finite(score):
            skipped.append(where | {"reason": f"non-numeric score {score!r}"})
            continue
        category = categories.get(id_key(item.get("category_id")))
        found.append(Detection(path, Region(tuple(bbox)), None if score is None else
                               float(score), category, dict(item)))
    _missing_images(found, skipped)
    return [d for d in found if d.image.is_file()], skipped


def _finite(value: Any) -> bool:
    try:
        return not isinstance(value, bool) and math.isfinite(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def _missing_images(found: list[Detection], skipped: list[dict[str, Any]]) -> None:
    for path in sorted({d.image for d in found if not d.image.is_file()}):
        count = sum(d.image == path for d in found)
        skipped.append({"image": str(path), "boxes": count, "reason": "image file not found"})


def _yolo(folder: Path, images: Path) -> tuple[list[Detection], list[dict[str, Any]]]:
    """YOLO label files: `class cx cy w h [conf]` per line, fractions of the image's size."""
    skipped: list[dict[str, Any]] = []
    by_stem: dict[str, list[Path]] = {}
    for path in list_images(images):
        by_stem.setdefault(path.stem, []).append(path)
    found: list[Detection] = []
    labels = sorted(folder.rglob("*.txt"))
    if not labels:
        raise DataError(f"{folder} holds no YOLO label files (*.txt).")
    for label_file in labels:
        matches = by_stem.get(label_file.stem, [])
        if len(matches) != 1:
            why = "no image of that name" if not matches else "several images of that name"
            skipped.append({"file": str(label_file), "reason": f"{why} in {images}"})
            continue
        try:
            lines = label_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            skipped.append({"file": str(label_file), "reason": f"unreadable: {exc}"})
            continue
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            detection, why = _yolo_line(line, matches[0], label_file, number)
            if detection is None:
                skipped.append({"file": str(label_file), "line": number, "reason": why})
            else:
                found.append(detection)
    return found, skipped


def _yolo_line(line: str, image: Path, label_file: Path, number: int
               ) -> tuple[Detection | None, str]:
    parts = line.split()
    if len(parts) not in (5, 6):
        return None, f"expected 'class cx cy w h [conf]', got {line!r}"
    try:
        values = [float(v) for v in parts[1:]]
    except ValueError:
        return None, f"non-numeric values in {line!r}"
    if not all(math.isfinite(v) for v in values):
        return None, f"non-finite values in {line!r}"
    cx, cy, w, h = values[:4]
    if w <= 0 or h <= 0:
        return None, f"box without area in {line!r}"
    if not (0 <= cx <= 1 and 0 <= cy <= 1) or w > 1.5 or h > 1.5:
        return None, f"not normalised to the image (0-1) in {line!r}"
    score = values[4] if len(values) == 5 else None
    record = {"label_file": str(label_file), "line": number, "class": parts[0],
              "bbox_normalized": [cx, cy, w, h]} | ({"score": score} if score is not None
                                                    else {})
    return Detection(image, Region((cx, cy, w, h), normalized=True), score, parts[0],
                     record), ""
