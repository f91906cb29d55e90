"""Near-duplicate photos: the copies that resizing, recompression, flips, 90-degree rotations,
letterbox padding and small crops make of one photo, across every source of a dataset.

Why not a perceptual hash alone: a 64-bit pHash over the eight rotations and flips finds the
resized, recompressed and turned copies, but a crop moves every coefficient, and photos of one
product on a white sheet sit as close as a crop does (measured in bench/bench_duplicates.py).
So this works like copy detection does, in three steps:

1. **Fingerprint** (in `prepare`'s decode workers, from the pixels already decoded): uniform
   borders (letterbox padding) trimmed, a 64x64 grey and a 32x32 colour thumbnail, and the
   low-frequency DCT (a real-valued pHash) of the whole photo and of 18 windows that cover
   crops of 80-90% of it.
2. **Candidates**: each photo's whole-photo DCT against every window of every photo, in a form
   that ignores flips and 90-degree turns (coefficient magnitudes, symmetrised); the nearest
   few windows are then checked with signs, in the eight orientations.
3. **Verification** of each candidate: the window is refined to the exact crop (coordinate
   search on a band-passed correlation), and the pair is a copy only if the aligned pictures
   correlate in fine detail *and* agree in colour. Two photos of one product, or a re-shoot of
   one scene, differ in one or the other.

The same detector serves `prepare` (groups stay in one split, `--drop-duplicates`) and the
dataset audit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from waste_cli.core.console import Reporter
from waste_cli.core.processes import die_with_parent

__all__ = ["CopyPair", "Fingerprint", "copy_groups", "find_copies", "fingerprint"]

SIDE = 96  # the grey thumbnail's side: the verification's resolution
SEARCH_SIDE = 32  # the blurred thumbnail the crop is first searched on
COLOUR_SIDE = 32
DCT_SIDE = 32  # windows are resized to this before the DCT
BAND = 8  # the DCT's lowest BAND x BAND frequencies, the DC term left out
# (scale, y, x): the whole photo, then 3 x 3 positions of 90% and of 80% windows. A crop of
# 80-100% of each side lies within a few percent of one of them; verification closes the gap.
WINDOWS = ((1.0, 0.0, 0.0), *((s, y, x) for s in (0.9, 0.8) for y in (0.0, 0.5, 1.0)
                             for x in (0.0, 0.5, 1.0)))
FLAT = 6  # a border row or column whose channels vary by at most this is padding
NEIGHBOURS = 6  # windows kept per photo from the orientation-free search
CANDIDATE_SIMILARITY = 0.85  # signed low-frequency similarity a pair needs to be verified
DETAIL_CORRELATION = 0.85  # band-passed correlation of the aligned pair
# The aligned pair's colour difference on an 8 x 8 grid, 98th percentile (0-441): one cell of
# another colour (a product variant's label) is enough to tell two photos apart.
COLOUR_DISTANCE = 20.0


@dataclass(frozen=True)
class Fingerprint:
    """What the detector keeps of one photo (about 17 KB)."""

    gray: np.ndarray  # (SIDE, SIDE) uint8, borders trimmed, aspect not kept
    colour: np.ndarray  # (COLOUR_SIDE, COLOUR_SIDE, 3) uint8, the same area
    windows: np.ndarray  # (len(WINDOWS), BAND * BAND - 1) float32, unit length


@dataclass(frozen=True)
class CopyPair:
    """Photos `first` < `second` (indices into the fingerprints) are copies of one another."""

    first: int
    second: int
    detail: float  # the aligned pair's band-passed correlation (1 = identical)
    colour: float  # the aligned pair's colour distance (0 = identical)


def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: `M @ x @ M.T` is the 2-D DCT of an n x n block."""
    k = np.arange(n)[:, None]
    m = np.cos(math.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m.astype(np.float32)


_DCT = _dct_matrix(DCT_SIDE)[:BAND]


def _low_frequencies(block: np.ndarray) -> np.ndarray:
    """The BAND x BAND lowest DCT coefficients of a DCT_SIDE square, DC excluded, unit length."""
    coefficients = (_DCT @ block @ _DCT.T).ravel()[1:]
    return coefficients / (np.linalg.norm(coefficients) + 1e-6)


def _trim(pixels: np.ndarray) -> np.ndarray:
    """`pixels` (H, W, 3) without the uniform rows and columns at its edges (letterbox padding)
    and, where there were some, without the 3% next to them that compression smears the
    padding into. At least an eighth of each side is kept."""
    height, width = pixels.shape[:2]

    def flat(line: np.ndarray) -> bool:
        return int((line.max(axis=0).astype(np.int16) - line.min(axis=0)).max()) <= FLAT

    def inner_edge(lines: list[np.ndarray], length: int) -> int:
        """How many of `lines` (outermost first) are padding, with the smeared margin."""
        count = 0
        while count < len(lines) and flat(lines[count]):
            count += 1
        return min(len(lines), count + math.ceil(0.03 * length)) if count else 0

    rows = [pixels[k] for k in range(height)]
    top = inner_edge(rows[: height // 2 - height // 16], height)
    bottom = height - inner_edge(rows[::-1][: height // 2 - height // 16], height)
    columns = [pixels[top:bottom, k] for k in range(width)]
    left = inner_edge(columns[: width // 2 - width // 16], width)
    right = width - inner_edge(columns[::-1][: width // 2 - width // 16], width)
    return pixels[top:bottom, left:right]


def fingerprint(image: Image.Image) -> Fingerprint:
    """The fingerprint of an RGB photo (any size: it is shrunk first)."""
    small = image.copy()
    small.thumbnail((160, 160), Image.Resampling.BILINEAR, reducing_gap=2.0)
    trimmed = Image.fromarray(np.ascontiguousarray(_trim(np.asarray(small.convert("RGB")))))
    gray_image = trimmed.convert("L").resize((SIDE, SIDE), Image.Resampling.BOX)
    gray = np.asarray(gray_image)
    colour = np.asarray(trimmed.resize((COLOUR_SIDE, COLOUR_SIDE), Image.Resampling.BOX))
    windows = np.stack([
        _low_frequencies(np.asarray(gray_image.resize(
            (DCT_SIDE, DCT_SIDE), Image.Resampling.BOX, box=_window_box(window)),
            dtype=np.float32))
        for window in WINDOWS])
    return Fingerprint(gray, colour, windows.astype(np.float32))


def _window_box(window: tuple[float, float, float]) -> tuple[float, float, float, float]:
    """A window (scale, y, x) as a box in the SIDE x SIDE thumbnail."""
    scale, y, x = window
    size = SIDE * scale
    return (x * (SIDE - size), y * (SIDE - size), x * (SIDE - size) + size,
            y * (SIDE - size) + size)


# The eight orientations (flips and 90-degree turns) as what they do to DCT coefficients:
# a transpose swaps u and v, a flip negates the odd frequencies along its axis.
def _orientations(coefficients: np.ndarray) -> np.ndarray:
    """(..., BAND*BAND-1) -> (..., 8, BAND*BAND-1): the coefficients of the eight orientations,
    in the order of `_orient_pixels`."""
    full = np.concatenate([np.zeros((*coefficients.shape[:-1], 1), np.float32), coefficients],
                          axis=-1).reshape(*coefficients.shape[:-1], BAND, BAND)
    odd = np.where(np.arange(BAND) % 2 == 1, -1.0, 1.0).astype(np.float32)
    variants = []
    for block in (full, np.swapaxes(full, -1, -2)):
        for flip_rows in (False, True):
            for flip_columns in (False, True):
                v = block * (odd[:, None] if flip_rows else 1) * (odd[None, :] if flip_columns
                                                                   else 1)
                variants.append(v.reshape(*v.shape[:-2], BAND * BAND)[..., 1:])
    return np.stack(variants, axis=-2)


# Orientation k undone: a transpose followed by a flip is undone by the other flip first.
_INVERSE = (0, 1, 2, 3, 4, 6, 5, 7)


def _orient_pixels(pixels: np.ndarray, k: int) -> np.ndarray:
    """Orientation `k` (0-7, as `_orientations` numbers them) of an (H, W[, C]) array."""
    if k >= 4:
        pixels = np.swapaxes(pixels, 0, 1)
    if k % 4 >= 2:
        pixels = pixels[::-1]
    if k % 2:
        pixels = pixels[:, ::-1]
    return np.ascontiguousarray(pixels)


def _orientation_free(windows: np.ndarray) -> np.ndarray:
    """A form of the window coefficients that flips and 90-degree turns leave unchanged:
    magnitudes, symmetrised over u and v (upper triangle), centred and of unit length."""
    full = np.concatenate([np.zeros((*windows.shape[:-1], 1), np.float32), np.abs(windows)],
                          axis=-1).reshape(*windows.shape[:-1], BAND, BAND)
    symmetric = full + np.swapaxes(full, -1, -2)
    rows, columns = np.triu_indices(BAND)
    upper = symmetric[..., rows, columns][..., 1:]
    upper = upper - upper.reshape(-1, upper.shape[-1]).mean(axis=0)
    return upper / (np.linalg.norm(upper, axis=-1, keepdims=True) + 1e-6)


def _candidates(prints: Sequence[Fingerprint], advance: Callable[[int], None] = lambda n: None
                ) -> dict[tuple[int, int], tuple[int, int]]:
    """(query, other) -> (window of other, orientation of query): pairs worth verifying.
    `advance(n)` is told as each n photos are searched."""
    windows = np.stack([p.windows for p in prints])  # (n, W, D)
    count, per = windows.shape[:2]
    free = _orientation_free(windows).astype(np.float32)
    index = free.reshape(count * per, -1)
    oriented = _orientations(windows[:, 0])  # (n, 8, D)
    owner = np.repeat(np.arange(count), per)
    keep = min(NEIGHBOURS, index.shape[0] - per)
    found: dict[tuple[int, int], tuple[float, int, int, int, int]] = {}
    import torch  # here: decoding (predict on ONNX included) must not load torch

    index_t = torch.from_numpy(index)
    chunk = max(1, 2**26 // max(1, index.shape[0]))
    for start in range(0, count, chunk):
        queries = np.arange(start, min(count, start + chunk))
        similarity = torch.from_numpy(free[queries, 0]) @ index_t.T
        own = torch.from_numpy(queries[:, None] * per + np.arange(per)[None, :])
        similarity.scatter_(1, own, -2.0)  # not itself
        nearest = similarity.topk(keep, dim=1).indices.numpy()
        others = owner[nearest]
        # Signed, in the eight orientations of the query: (queries, 8, keep) -> best of 8.
        signed = np.einsum("qod,qkd->qok", oriented[queries],
                           windows[others, nearest % per])
        best, orientation = signed.max(axis=1), signed.argmax(axis=1)
        rows, columns = np.nonzero((best >= CANDIDATE_SIMILARITY)
                                   & (others != queries[:, None]))
        for row, column in zip(rows.tolist(), columns.tolist(), strict=True):
            query, other = int(queries[row]), int(others[row, column])
            key = (min(query, other), max(query, other))
            score = float(best[row, column])
            if score > found.get(key, (-1.0,))[0]:
                found[key] = (score, query, other, int(nearest[row, column] % per),
                              int(orientation[row, column]))
        advance(len(queries))
    return {(query, other): (window, turn)
            for (_, query, other, window, turn) in found.values()}


def _band_pass(gray: np.ndarray) -> np.ndarray:
    """Detail at the scale copies keep and re-shoots lose: a difference of two blurs."""
    image = Image.fromarray(gray)
    fine = np.asarray(image.filter(ImageFilter.GaussianBlur(0.7)), dtype=np.float32)
    coarse = np.asarray(image.filter(ImageFilter.GaussianBlur(3)), dtype=np.float32)
    return fine - coarse


def _standardised(pixels: np.ndarray) -> np.ndarray:
    """`pixels` flattened, centred and of unit length: what `_correlation` compares to."""
    flat = pixels.astype(np.float32).ravel()
    flat = flat - flat.mean()
    return flat / (float(np.linalg.norm(flat)) + 1e-6)


def _correlation(pixels: np.ndarray, target: np.ndarray) -> float:
    """Pearson correlation of `pixels` with a `_standardised` target (the hot loop)."""
    flat = pixels.ravel()
    total = float(flat.sum())
    energy = float(flat @ flat) - total * total / flat.size
    return float(flat @ target) / (math.sqrt(max(energy, 0.0)) + 1e-6)


class _Verifier:
    """Aligns a candidate pair exactly and judges it; each photo's two filtered thumbnails are
    made once."""

    def __init__(self, prints: Sequence[Fingerprint]) -> None:
        self.prints = prints
        self._filtered: dict[int, tuple[Image.Image, Image.Image]] = {}

    def filtered(self, index: int) -> tuple[Image.Image, Image.Image]:
        """(smooth, detail): a blurred grey thumbnail of SEARCH_SIDE, whose correlation
        changes gently with the crop (to find it), and the band-passed one (to judge it)."""
        if index not in self._filtered:
            gray = Image.fromarray(self.prints[index].gray)
            smooth = gray.resize((SEARCH_SIDE, SEARCH_SIDE), Image.Resampling.BOX).filter(
                ImageFilter.GaussianBlur(0.75))
            self._filtered[index] = (
                Image.fromarray(np.asarray(smooth, dtype=np.float32)),
                Image.fromarray(_band_pass(self.prints[index].gray)))
        return self._filtered[index]

    def judge(self, query: int, other: int, window: int, orientation: int
              ) -> tuple[float, float]:
        """(detail correlation, colour distance) of `query`, turned by `orientation`, against
        the best-aligned crop of `other`, searched from `WINDOWS[window]`."""
        mine = [_standardised(_orient_pixels(np.asarray(image), orientation))
                for image in self.filtered(query)]
        theirs = self.filtered(other)

        def score(box: list[float], level: int) -> float:
            side = theirs[level].width  # level 0 is the small, blurred thumbnail
            crop = theirs[level].resize((side, side), Image.Resampling.BILINEAR,
                                        box=tuple(v * side / SIDE for v in box))
            return _correlation(np.asarray(crop, dtype=np.float32), mine[level])

        starts = [list(_window_box(WINDOWS[k])) for k in dict.fromkeys((window, *range(
            len(WINDOWS))))]
        box = max(starts, key=lambda start: score(start, 0))
        best = 0.0
        for level, steps in ((0, (1 / 16, 1 / 32, 1 / 64)), (1, (1 / 64, 1 / 128))):
            if level == 1:
                colour = self._colour_distance(query, other, orientation, box)
                if colour > 2 * COLOUR_DISTANCE:  # far apart in colour, even roughly aligned
                    return 0.0, colour
            best = score(box, level)
            for step in steps:  # coordinate search of the crop's four edges
                improved = True
                while improved:
                    improved = False
                    for edge in range(4):
                        for move in (-step, step):
                            trial = box.copy()
                            trial[edge] = min(SIDE, max(0.0, trial[edge] + move * SIDE))
                            if min(trial[2] - trial[0], trial[3] - trial[1]) < SIDE / 2:
                                continue
                            value = score(trial, level)
                            if value > best + 1e-4:
                                best, box, improved = value, trial, True
        return best, self._colour_distance(query, other, orientation, box)

    def _colour_distance(self, query: int, other: int, orientation: int,
                         box: list[float]) -> float:
        scale = COLOUR_SIDE / SIDE
        mine = Image.fromarray(_orient_pixels(self.prints[query].colour, orientation))
        theirs = Image.fromarray(self.prints[other].colour).resize(
            (COLOUR_SIDE, COLOUR_SIDE), Image.Resampling.BILINEAR,
            box=tuple(v * scale for v in box))
        a = np.asarray(mine.resize((8, 8), Image.Resampling.BOX), dtype=np.float32)
        b = np.asarray(theirs.resize((8, 8), Image.Resampling.BOX), dtype=np.float32)
        # A shift of the whole picture's colour (white balance, exposure) is not a difference
        # in what it shows: the mean difference is taken out.
        difference = (a - b) - (a - b).mean(axis=(0, 1))
        return float(np.quantile(np.sqrt((difference ** 2).sum(axis=-1)), 0.98))


_worker_verifier: _Verifier | None = None


def _start_worker(prints: Sequence[Fingerprint], parent: int) -> None:
    global _worker_verifier
    die_with_parent(parent)
    _worker_verifier = _Verifier(prints)


def _verify(verifier: _Verifier, candidates: list[tuple[int, int, int, int]]
            ) -> list[tuple[int, int, float, float]]:
    """The candidates (query, other, window, orientation) that are copies, with their scores."""
    copies = []
    for query, other, window, orientation in candidates:
        # The crop is searched in `other`: when `query` is the larger of the two, only the
        # other way round finds it.
        detail, colour = verifier.judge(query, other, window, orientation)
        if detail < DETAIL_CORRELATION or colour > COLOUR_DISTANCE:
            detail, colour = verifier.judge(other, query, 0, _INVERSE[orientation])
        if detail >= DETAIL_CORRELATION and colour <= COLOUR_DISTANCE:
            copies.append((query, other, detail, colour))
    return copies


def _verify_in_worker(candidates: list[tuple[int, int, int, int]]
                      ) -> list[tuple[int, int, float, float]]:
    assert _worker_verifier is not None
    return _verify(_worker_verifier, candidates)


def find_copies(prints: Sequence[Fingerprint | None], workers: int = 1,
                reporter: Reporter | None = None) -> list[CopyPair]:
    """Every pair of near-duplicate photos among `prints` (None: a photo that could not be
    read, never a copy); the candidates are verified on `workers` processes, with progress
    bars on `reporter`."""
    reporter = reporter or Reporter(quiet=True)
    known = [k for k, p in enumerate(prints) if p is not None]
    if len(known) < 2:
        return []
    present = [p for p in prints if p is not None]
    with reporter.bar("search copies", len(present)) as bar:
        candidates = [(*pair, *how) for pair, how
                      in sorted(_candidates(present, bar.advance).items())]
    size = max(1, min(256, len(candidates) // (max(workers, 1) * 8) + 1))
    chunks = [candidates[k:k + size] for k in range(0, len(candidates), size)]
    found: list[tuple[int, int, float, float]] = []
    pool = None
    if workers > 1 and len(chunks) > 1:
        pool = ProcessPoolExecutor(workers, initializer=_start_worker,
                                   initargs=(present, os.getpid()))
        results: Iterator[list[tuple[int, int, float, float]]] = pool.map(
            _verify_in_worker, chunks)
    else:
        verifier = _Verifier(present)
        results = (_verify(verifier, chunk) for chunk in chunks)
    try:
        with reporter.bar("verify copies", len(candidates)) as bar:
            for chunk, copies in zip(chunks, results, strict=True):
                found += copies
                bar.advance(len(chunk))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    pairs = {}
    for query, other, detail, colour in found:
        first, second = sorted((known[query], known[other]))
        pairs[(first, second)] = CopyPair(first, second, round(detail, 4), round(colour, 2))
    return [pairs[key] for key in sorted(pairs)]


def copy_groups(count: int, pairs: Sequence[CopyPair]) -> list[list[int]]:
    """The connected groups (of two or more, each sorted) that `pairs` make of `count` photos."""
    parent = list(range(count))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for pair in pairs:
        a, b = root(pair.first), root(pair.second)
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for k in range(count):
        groups.setdefault(root(k), []).append(k)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])
