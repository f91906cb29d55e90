"""Source images and the work done on each: decode, validate, orient, crop, resize, encode.

`process_source` is what the worker processes of `prepare` run. It decodes every image fully, so
truncated and corrupt files are caught here rather than in the middle of training.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from waste_cli.data.scan import class_folders, list_images
from waste_cli.data.taxonomy import ClassMap

__all__ = [
    "Box",
    "CropJob",
    "CropResult",
    "SourceImage",
    "SourceResult",
    "folder_sources",
    "load_rgb",
    "open_image",
    "process_source",
]

Box = tuple[float, float, float, float]
DECODE_ERRORS = (
    UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError
)


@dataclass(frozen=True)
class CropJob:
    """One output image: the whole source (box None) or a box of it, with its class."""

    label: str
    box: Box | None
    name: str


@dataclass(frozen=True)
class SourceImage:
    path: Path
    jobs: tuple[CropJob, ...]


@dataclass(frozen=True)
class CropResult:
    job: CropJob
    staged: Path | None  # the encoded JPEG, or None when skipped
    reason: str = ""


@dataclass(frozen=True)
class SourceResult:
    source: SourceImage
    sha256: str
    crops: tuple[CropResult, ...]


def folder_sources(root: Path, class_map: ClassMap) -> tuple[list[SourceImage], list[str]]:
    """One whole-image job per file of SRC/<class>/; also the class folders the map dropped."""
    sources, dropped = [], []
    for folder in class_folders(root):
        label = class_map(folder)
        if label is None:
            dropped.append(folder)
            continue
        for path in list_images(root / folder):
            sources.append(SourceImage(path, (CropJob(label, None, path.stem),)))
    return sources, dropped


def open_image(data: bytes, draft_size: int = 0) -> Image.Image:
    """Decode an image completely, apply its EXIF orientation and return it as RGB.

    `draft_size` lets the JPEG decoder skip detail below that shorter side (much faster for big
    photos that will be shrunk anyway). Raises one of DECODE_ERRORS for a bad file.
    """
    if not data:
        raise ValueError("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
        if draft_size and image.format == "JPEG":
            scale = min(image.size) / draft_size
            image.draft("RGB", (int(image.width / scale), int(image.height / scale)))
        image.load()
    ImageOps.exif_transpose(image, in_place=True)  # upright photos: no copy
    return image if image.mode == "RGB" else image.convert("RGB")


def load_rgb(path: Path, max_short_side: int = 0) -> Image.Image:
    """Open an image file as RGB with EXIF orientation; shrink on decode when much larger."""
    return open_image(path.read_bytes(), draft_size=max_short_side)


def _resize_shorter(image: Image.Image, size: int) -> Image.Image:
    if size <= 0 or min(image.size) == size:
        return image
    scale = size / min(image.size)
    new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)


def _clip(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return (max(0, round(x0)), max(0, round(y0)), min(width, round(x1)), min(height, round(y1)))


def process_source(
    source: SourceImage, index: int, *, staging: Path, size: int, min_size: int, quality: int
) -> SourceResult:
    """Decode `source` once and write each of its crops as JPEG into `staging`."""
    try:
        data = source.path.read_bytes()
    except OSError as exc:
        return _failed(source, "", f"cannot read file: {exc.strerror or exc}")
    digest = hashlib.sha256(data).hexdigest()
    whole = len(source.jobs) == 1 and source.jobs[0].box is None
    try:
        image = open_image(data, draft_size=size if whole else 0)
    except DECODE_ERRORS as exc:
        return _failed(source, digest, f"not a readable image: {exc}")
    results = []
    for k, job in enumerate(source.jobs):
        crop = image if job.box is None else image.crop(_clip(job.box, *image.size))
        if min(crop.size) < min_size:
            results.append(CropResult(job, None, f"smaller than min-size ({crop.size})"))
            continue
        target = staging / f"{index}_{k}.jpg"
        _resize_shorter(crop, size).save(target, "JPEG", quality=quality)
        results.append(CropResult(job, target))
    return SourceResult(source, digest, tuple(results))


def _failed(source: SourceImage, digest: str, reason: str) -> SourceResult:
    return SourceResult(source, digest, tuple(CropResult(j, None, reason) for j in source.jobs))
