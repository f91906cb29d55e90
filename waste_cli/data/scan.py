"""Find images and classes on disk, and read the dataset description that `prepare` writes."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from waste_cli.core.errors import DataError
from waste_cli.core.formats import plain_cell, read_structured
from waste_cli.core.names import safe_name

__all__ = [
    "DATASET_FORMAT",
    "DATASET_JSON",
    "IMAGE_EXTENSIONS",
    "MANIFEST_CSV",
    "PSEUDO_SPLIT",
    "REPORT_JSON",
    "SPLITS",
    "TRUTH_CSV",
    "class_folders",
    "class_samples",
    "crop_settings",
    "dataset_classes",
    "image_sources",
    "is_image_path",
    "labeled_samples",
    "list_images",
    "manifest_column",
    "read_dataset_json",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp", ".tif",
                              ".tiff", ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".heic", ".heif",
                              ".avif"})
SPLITS = ("train", "val", "test")
# The files and folders of a prepared dataset besides the splits.
DATASET_JSON = "dataset.json"
DATASET_FORMAT = "wastecls-dataset"  # its "format": what marks a folder as prepare's own
REPORT_JSON = "prepare_report.json"
PSEUDO_SPLIT = "pseudolabel"  # unlabelled images (prepare --unlabeled-frac)
TRUTH_CSV = "pseudolabel_truth.csv"  # their hidden labels, to measure pseudo-label precision
MANIFEST_CSV = "manifest.csv"  # every image: its split, label, source and original file


def is_image_path(path: Path) -> bool:
    """True for a visible file whose extension (any case) is an image format."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under `folder`, sorted so that every run sees the same order.

    Hidden files and folders are left out, as a shell's `*` leaves them: a camera card's
    `.thumbnails/`, the `._IMG_0001.jpg` copies macOS leaves on other disks, and wastecls's own
    temporaries carry image suffixes but are not the user's photos. Folders reached through
    symbolic links are read, as torchvision's ImageFolder reads them, each real folder once; a
    link up to an ancestor (a loop) is not followed."""
    if not recursive:
        return sorted(p for p in folder.iterdir()
                      if not p.name.startswith(".") and p.is_file() and is_image_path(p))
    found: list[Path] = []
    real = Path(os.path.realpath(folder))
    # The folder's own ancestors count as seen: a link up to one of them is a loop.
    seen = {(s.st_dev, s.st_ino) for s in map(os.stat, real.parents)}
    for top, folders, files in os.walk(folder, followlinks=True):
        try:
            info = os.stat(top)
        except OSError:
            folders[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:  # a loop, or a folder linked twice
            folders[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        found += [path for name in files if not name.startswith(".")
                  and is_image_path(path := Path(top) / name) and path.is_file()]
    return sorted(found)


def class_folders(root: Path) -> list[str]:
    """Names of the sub-folders of `root` that hold at least one image, sorted.

    Not torchvision's `find_classes`: that lists empty and hidden folders too, and importing it
    would cost `predict` on an ONNX model the torch import."""
    if not root.is_dir():
        raise DataError(f"Folder {root} does not exist.")
    return sorted(
        d.name for d in root.iterdir()
        if d.is_dir() and not d.name.startswith(".") and list_images(d)
    )


def read_dataset_json(root: Path) -> dict[str, Any] | None:
    """The dataset.json that `prepare` wrote into `root`, or None for a plain folder."""
    path = root / DATASET_JSON
    if not path.is_file():
        return None
    try:
        meta = read_structured(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot read {path}: {exc}. Run `wastecls prepare` again to rewrite "
                        "it.") from None
    shapes = {"classes": list, "settings": dict, "source": dict}
    if not isinstance(meta, dict) or any(not isinstance(meta.get(key, kind()), kind)
                                         for key, kind in shapes.items()):
        raise DataError(f"{path} is not the dataset.json `wastecls prepare` writes (an object "
                        "with a classes list and settings). Run `wastecls prepare` again.")
    return meta


def crop_settings(root: Path) -> dict[str, Any]:
    """How `prepare` cut and sized the images of `root` (square, zoom, size), so that a model
    trained on them crops a detector's boxes the same way; {} for a folder it did not make."""
    meta = read_dataset_json(root)
    if not meta:
        return {}
    options = meta.get("settings", {})
    boxes = meta.get("source", {}).get("kind") == "coco"
    return {"square": bool(options.get("square", False)) and boxes,
            "zoom": float(options.get("zoom", 1.0)) if boxes else 1.0,
            "size": int(options.get("size", 0))}


def dataset_classes(root: Path, split: str = "train") -> list[str]:
    """Class names in index order: dataset.json's when present (each a safe folder name, none
    twice), else sorted folder names."""
    meta = read_dataset_json(root)
    if meta and meta.get("classes"):
        where = f"a class in {root / DATASET_JSON}"
        classes = [safe_name(str(name), where) for name in meta["classes"]]
        twice = sorted({name for name in classes if classes.count(name) > 1})
        if twice:
            raise DataError(f"{root / DATASET_JSON} lists the class {', '.join(twice)} more "
                            "than once: a model would have two outputs of one name. Run "
                            "`wastecls prepare` again, or fix its classes list.")
        return classes
    folder = root / split if (root / split).is_dir() else root
    classes = class_folders(folder)
    if not classes:
        raise DataError(f"No class folders with images in {folder}.")
    return classes


def labeled_samples(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(image, class index) for every image in `folder/<class>/`; unknown folders are an error."""
    found = class_folders(folder)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"{folder} has class folders that the class list does not: {', '.join(unknown)}. "
            f"Known classes: {', '.join(classes)}."
        )
    return class_samples(folder, {name: i for i, name in enumerate(classes)})


def class_samples(folder: Path, class_to_idx: dict[str, int]) -> list[tuple[Path, int]]:
    """(image, index) for every image under `folder/<class>/` of the classes given
    (torchvision's `make_dataset`, with this module's idea of an image file)."""
    from torchvision.datasets.folder import make_dataset

    found = make_dataset(str(folder), class_to_idx, is_valid_file=lambda p: is_image_path(Path(p)),
                         allow_empty=True)
    return [(Path(path), index) for path, index in found]


def manifest_column(root: Path, column: str) -> dict[str, str]:
    """One column of the manifest.csv that `prepare` wrote into `root`, by image (normalised
    path -> value); {} for a folder it did not make or a manifest it cannot read."""
    path = root / MANIFEST_CSV
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return {os.path.normpath(root / plain_cell(row["file"])): plain_cell(row[column])
                    for row in csv.DictReader(handle) if row.get("file") and row.get(column)}
    except (OSError, KeyError, ValueError, csv.Error):
        return {}


def image_sources(root: Path) -> dict[str, str]:
    """Each image's source name (normalised path -> source), from prepare's manifest."""
    return manifest_column(root, "source")
