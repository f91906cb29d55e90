"""What can be told of a photo file without a model (for `audit`): whether it decodes, its
size, whether it is nearly one flat colour, and its near-duplicate fingerprint, all from one
reduced decode, on all cores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from waste_cli.core.console import Reporter
from waste_cli.core.processes import die_with_parent
from waste_cli.data.duplicates import Fingerprint, fingerprint
from waste_cli.data.sources import DECODE_ERRORS, decode_image

__all__ = ["FLAT_SPREAD", "PhotoFacts", "read_facts"]

DECODE_SIDE = 192  # the reduced decode: twice the fingerprint's thumbnail
FLAT_SPREAD = 3.0  # grey standard deviation under which a photo shows nothing (a blank frame)
CHUNK = 32  # photos per task sent to a worker


@dataclass(frozen=True)
class PhotoFacts:
    """One photo file as `audit` sees it before any model does."""

    size: tuple[int, int] = (0, 0)  # full size, EXIF orientation applied
    spread: float = 0.0  # grey standard deviation (0-255) of the reduced photo
    fingerprint: Fingerprint | None = None
    error: str = ""  # why it could not be read; empty when it was

    @property
    def readable(self) -> bool:
        return not self.error


def _facts(path: Path) -> PhotoFacts:
    try:
        image, size = decode_image(path.read_bytes(), DECODE_SIDE)
    except OSError as exc:
        return PhotoFacts(error=f"cannot read file: {exc.strerror or exc}")
    except DECODE_ERRORS as exc:
        return PhotoFacts(error=f"not a readable image: {exc}")
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    return PhotoFacts(size, float(grey.std()), fingerprint(image))


def _chunk_facts(paths: list[Path]) -> list[PhotoFacts]:
    return [_facts(path) for path in paths]


def read_facts(paths: Sequence[Path], workers: int, reporter: Reporter) -> list[PhotoFacts]:
    """PhotoFacts of every path, in order, decoded on `workers` processes (0 or 1: here)."""
    chunks = [list(paths[k:k + CHUNK]) for k in range(0, len(paths), CHUNK)]
    facts: list[PhotoFacts] = []
    with reporter.bar("read photos", len(paths)) as bar:
        if workers <= 1 or len(chunks) < 2:
            for chunk in chunks:
                facts += _chunk_facts(chunk)
                bar.advance(len(chunk))
            return facts
        pool = ProcessPoolExecutor(min(workers, os.cpu_count() or 1),
                                   initializer=die_with_parent, initargs=(os.getpid(),))
        try:
            for chunk, done in zip(chunks, pool.map(_chunk_facts, chunks), strict=True):
                facts += done
                bar.advance(len(chunk))
        finally:
            pool.shutdown(cancel_futures=True)
    return facts
