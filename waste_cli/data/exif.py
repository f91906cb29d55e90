"""Where and when a photo was taken, from its EXIF data (GPS IFD and DateTimeOriginal), read
with Pillow (JPEG, TIFF, WebP, PNG; HEIC with the heif extra) without decoding the pixels."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import ExifTags, Image

from waste_cli.data.sources import DECODE_ERRORS

__all__ = ["Place", "photo_place"]

_LATITUDE_REF, _LATITUDE, _LONGITUDE_REF, _LONGITUDE = 1, 2, 3, 4
_DATE_TAKEN, _OFFSET_TAKEN = 0x9003, 0x9011  # DateTimeOriginal, OffsetTimeOriginal


@dataclass(frozen=True)
class Place:
    longitude: float  # degrees east (west is negative)
    latitude: float  # degrees north (south is negative)
    taken: str | None = None  # ISO 8601, with the offset when the camera recorded it


def _degrees(value: Any, reference: Any, negative: str) -> float | None:
    """Degrees from EXIF's (degrees, minutes, seconds) rationals and N/S or E/W."""
    try:
        parts = [float(v) for v in value]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if len(parts) != 3 or not all(math.isfinite(p) for p in parts):
        return None
    degrees = parts[0] + parts[1] / 60 + parts[2] / 3600
    reference = reference.decode("ascii", "replace") if isinstance(reference, bytes) \
        else str(reference or "")
    return -degrees if reference.strip().upper() == negative else degrees


def _taken(exif: Image.Exif) -> str | None:
    details = exif.get_ifd(ExifTags.IFD.Exif)
    stamp = details.get(_DATE_TAKEN)
    if not isinstance(stamp, str) or len(stamp) < 19:
        return None
    date, _, time = stamp.strip().partition(" ")
    iso = date.replace(":", "-") + "T" + time[:8]
    offset = details.get(_OFFSET_TAKEN)
    return iso + (offset.strip() if isinstance(offset, str) and offset.strip() else "")


def photo_place(path: Path) -> Place | None:
    """The photo's GPS position and time taken, or None when it records no usable position."""
    try:
        with Image.open(path) as image:
            exif = image.getexif()
            gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
            latitude = _degrees(gps.get(_LATITUDE), gps.get(_LATITUDE_REF), "S")
            longitude = _degrees(gps.get(_LONGITUDE), gps.get(_LONGITUDE_REF), "W")
            taken = _taken(exif)
    except (OSError, *DECODE_ERRORS):
        return None
    if latitude is None or longitude is None or abs(latitude) > 90 or abs(longitude) > 180:
        return None
    return Place(round(longitude, 9), round(latitude, 9), taken)
