"""Source images and the work done on each: decode, validate, orient, crop, resize, encode.

`process_source` is what the worker processes of `prepare` run. It decodes every image fully, so
truncated and corrupt files are caught here rather than in the middle of training.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from waste_cli.data.duplicates import Fingerprint, fingerprint
from waste_cli.data.scan import class_folders, list_images
from waste_cli.data.taxonomy import ClassMap

__all__ = [
    "Box",
    "CropJob",
    "CropResult",
    "SourceImage",
    "SourceResult",
    "box_reduction",
    "cut_box",
    "decode_image",
    "folder_sources",
    "load_rgb",
    "open_image",
    "oriented_size",
    "process_source",
    "resize_shorter",
    "to_rgb",
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
    origin: str = ""  # the name of the source it comes from (prepare of several sources)


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
    size: tuple[int, int] = (0, 0)  # the full image's, as oriented
    fingerprint: Fingerprint | None = None  # for finding near-duplicates, when asked for


def folder_sources(root: Path, class_map: ClassMap) -> tuple[list[SourceImage], list[str]]:
    """One whole-image job per file of SRC/<class>/; also the class folders the map dropped."""
    sources, dropped = [], []
    for folder in class_folders(root):
        label = class_map.target(folder, f"class folder {root / folder}")
        if label is None:
            dropped.append(folder)
            continue
        for path in list_images(root / folder):
            sources.append(SourceImage(path, (CropJob(label, None, path.stem),)))
    return sources, dropped


_HIGH_DEPTH = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535}


def to_rgb(image: Image.Image) -> Image.Image:
    """The picture as 8-bit RGB, whatever the mode: high-bit-depth greyscale scaled (not
    clipped) to 8 bits, transparency composited over white, palette, CMYK, 1-bit, LA ...
    converted. PIL's plain convert("RGB") clips 16-bit pixels to white and drops alpha onto
    black, which would silently show the model another picture."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _HIGH_DEPTH or mode == "F":
        pixels = np.asarray(image, dtype=np.float32)
        top = _HIGH_DEPTH.get(mode) or (1.0 if pixels.max(initial=0) <= 1 else 255.0)
        grey = np.clip(pixels * (255 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the image as it will stand after its EXIF orientation."""
    orientation = image.getexif().get(0x0112, 1)
    return (image.height, image.width) if orientation in _TRANSPOSED else image.size


# How far a decoder may shrink an image: from its oriented (width, height), the largest factor
# by which every pixel the caller needs keeps at least one decoded pixel.
Reduction = Callable[[int, int], float]


_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1",
                b"avif")


def _is_heif(data: bytes) -> bool:
    """An ISO media file of a HEIF brand (the `ftyp` box at the start): a phone's photo."""
    return data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS


def _register_heif() -> bool:
    """Teach Pillow HEIC/HEIF through pillow-heif, if it is installed."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def _unreadable(data: bytes) -> str:
    if _is_heif(data):
        return ("a HEIC/HEIF photo, which needs the pillow-heif plugin: pip install "
                "'wastecls[heif]' (or pip install pillow-heif)")
    return "not an image file, or a format Pillow cannot read"


# Pillow's guard against decompression bombs, applied to the pixels a decode produces rather
# than to the size a file declares: a 100 MP panorama decoded at 1/8 for a model is 1.6 MP and
# safe, a PNG that declares 100 MP is refused. Every image wastecls reads goes through
# decode_image, which checks this limit itself (Pillow's own global is left as it is).
MAX_DECODED_PIXELS = 89_478_485  # Pillow's default Image.MAX_IMAGE_PIXELS
_JPEG_START = b"\xff\xd8\xff"


def _open(data: bytes) -> Image.Image:
    """The image's header, read lazily. A JPEG opens through its plugin, past the size check
    of Image.open: it may decode reduced, so `decode_image` judges the pixels it will make."""
    if data.startswith(_JPEG_START):
        return JpegImagePlugin.JpegImageFile(io.BytesIO(data))
    with warnings.catch_warnings():  # decode_image's own limit decides, and says why
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def decode_image(data: bytes, reduce: int | Reduction = 0
                 ) -> tuple[Image.Image, tuple[int, int]]:
    """Decode an image completely, apply its EXIF orientation, return it as 8-bit RGB with its
    full (oriented) size.

    The one decode function of every command. `reduce` lets the JPEG decoder skip detail the
    caller will never use (DCT scaling, much faster for camera-sized photos): an int keeps at
    least that shorter side, a function says how far the image may shrink. The decoded image
    is then smaller than the full size by the factor the decoder chose (at most 8), and callers
    scale coordinates by `image.width / full_size[0]`. Raises one of DECODE_ERRORS, with a
    reason a person can read, for a bad file.
    """
    if not data:
        raise ValueError("empty file")
    try:
        image = _open(data)
    except UnidentifiedImageError:
        if not (_is_heif(data) and _register_heif()):
            raise UnidentifiedImageError(_unreadable(data)) from None
        try:
            image = _open(data)
        except UnidentifiedImageError:  # Pillow's text names an in-memory buffer, not the file
            raise UnidentifiedImageError("a damaged HEIC/HEIF photo: pillow-heif cannot "
                                         "read it") from None
    reducible = bool(reduce) and image.format == "JPEG"
    # Before anything reads further (a PNG's EXIF lies after its pixels): the fewest pixels the
    # decoder can produce, then, after the JPEG decoder's reduction, the pixels it will produce.
    _refuse_bomb(image.size, image.width * image.height // (64 if reducible else 1))
    full = oriented_size(image)
    if reducible:
        factor = reduce(*full) if callable(reduce) else min(full) / reduce
        if factor >= 2:  # the decoder keeps at least the size asked for
            image.draft("RGB", (math.ceil(image.width / factor),
                                math.ceil(image.height / factor)))
        _refuse_bomb(full, image.width * image.height)
    image.load()
    ImageOps.exif_transpose(image, in_place=True)  # upright photos: no copy
    return to_rgb(image), full


def _refuse_bomb(size: tuple[int, int], pixels: int) -> None:
    if pixels > MAX_DECODED_PIXELS:
        raise Image.DecompressionBombError(
            f"{size[0]}x{size[1]} would decode to at least {pixels:,} pixels, more than the "
            f"{MAX_DECODED_PIXELS:,} allowed (a decompression bomb?)")


def open_image(data: bytes, min_short_side: int = 0) -> Image.Image:
    """`decode_image` for whole images: the picture, its shorter side kept >= `min_short_side`
    (0: full size)."""
    return decode_image(data, min_short_side)[0]


def load_rgb(path: Path, min_short_side: int = 0) -> Image.Image:
    """An image file as RGB with EXIF orientation; a much larger JPEG shrinks on decode, its
    shorter side kept >= `min_short_side` (0: full size)."""
    return open_image(path.read_bytes(), min_short_side)


def box_reduction(boxes: list[Box], target: int) -> Reduction:
    """How far an image may shrink on decode so that the shorter side of every box (pixels of
    the full image, x0 y0 x1 y1), as cut to the image, still has `target` pixels: its crops are
    resized to that. Boxes outside the image (skipped later) do not count."""

    def reduction(width: int, height: int) -> float:
        sides = []
        for box in boxes:
            x0, y0, x1, y1 = _clip(box, width, height)
            if x1 > x0 and y1 > y0:
                sides.append(min(x1 - x0, y1 - y0))
        return min(sides) / target if target and sides else 1.0

    return reduction


def cut_box(image: Image.Image, full_size: tuple[int, int], box: Box, *, size: int,
            min_size: int = 0) -> Image.Image | str:
    """The crop `prepare` makes of `box` (x0 y0 x1 y1 in pixels of the full image): cut to the
    image, its shorter side resized to `size` (0 keeps it). A box outside the image, or
    smaller than `min_size` there, gives the reason instead. `image` may be a reduced decode
    of the full image (see `decode_image`)."""
    full_box = _clip(box, *full_size)  # a box partly outside is cut to the image
    width, height = full_box[2] - full_box[0], full_box[3] - full_box[1]
    if width <= 0 or height <= 0:
        inside = box[0] < full_size[0] and box[1] < full_size[1] and box[2] > 0 and box[3] > 0
        return ("box is less than a pixel wide or high" if inside else
                f"box lies outside the image ({full_size[0]}x{full_size[1]})")
    if min(width, height) < min_size:
        return f"smaller than min-size ({width}x{height})"
    scale = image.width / full_size[0]
    if scale == 1:
        crop = image.crop(full_box)
    else:
        crop = image.crop(tuple(round(v * scale) for v in full_box))
    target = size or min(width, height)  # a reduced decode still gives the full-size crop
    return resize_shorter(crop, target, reducing_gap=3.0)


def resize_shorter(image: Image.Image, size: int, *, enlarge: bool = True,
                   reducing_gap: float | None = None) -> Image.Image:
    """`image` with its shorter side at `size` (bicubic, aspect kept; 0 keeps it). Without
    `enlarge` a smaller image is kept as it is. `reducing_gap` trades exactness for speed on
    large reductions (Pillow's reduce-then-resize)."""
    shorter = min(image.size)
    if size <= 0 or shorter == size or (shorter < size and not enlarge):
        return image
    scale = size / shorter
    new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(new, Image.Resampling.BICUBIC, reducing_gap=reducing_gap)


def _clip(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return (max(0, round(x0)), max(0, round(y0)), min(width, round(x1)), min(height, round(y1)))


def process_source(
    source: SourceImage, index: int, *, staging: Path, size: int, min_size: int, quality: int,
    fingerprints: bool = False,
) -> SourceResult:
    """Decode `source` once, write each of its crops as JPEG into `staging` and, with
    `fingerprints`, take the whole photo's near-duplicate fingerprint from the same pixels."""
    try:
        data = source.path.read_bytes()
    except OSError as exc:
        return _failed(source, "", f"cannot read file: {exc.strerror or exc}")
    digest = hashlib.sha256(data).hexdigest()
    boxes = [job.box for job in source.jobs if job.box is not None]
    reduce = box_reduction(boxes, size) if boxes else size
    try:
        image, full_size = decode_image(data, reduce)
    except DECODE_ERRORS as exc:
        return _failed(source, digest, f"not a readable image: {exc}")
    results = []
    for k, job in enumerate(source.jobs):
        if job.box is None:
            if min(full_size) < min_size:
                results.append(CropResult(job, None, f"smaller than min-size ({full_size})"))
                continue
            crop: Image.Image | str = resize_shorter(image, size, reducing_gap=3.0)
        else:
            crop = cut_box(image, full_size, job.box, size=size, min_size=min_size)
        if isinstance(crop, str):
            results.append(CropResult(job, None, crop))
            continue
        target = staging / f"{index}_{k}.jpg"
        encoded = io.BytesIO()  # in memory, then one write that raises if it falls short
        crop.save(encoded, "JPEG", quality=quality)
        try:
            target.write_bytes(encoded.getbuffer())
        except OSError as exc:  # a failed write names no file on its own
            raise OSError(exc.errno, exc.strerror, str(target)) from None
        results.append(CropResult(job, target))
    return SourceResult(source, digest, tuple(results), full_size,
                        fingerprint(image) if fingerprints else None)


def _failed(source: SourceImage, digest: str, reason: str) -> SourceResult:
    return SourceResult(source, digest, tuple(CropResult(j, None, reason) for j in source.jobs))
