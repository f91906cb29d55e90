"""What `review` goes through: items (a photo, or a box on one) with their given label and the
model's top guesses, read from any of the sources the review page accepts, and their order.

Sources: an audit folder (report.json), a predict CSV or JSON lines, a pseudolabel manifest, a
folder of photos (class folders give the label), or a COCO file with --images. Guesses a
source does not carry come from a model (the built-in one by default). Every item's file must
lie inside the source's roots: rows naming a file elsewhere are left out, and said so.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from waste_cli.core.console import Reporter
from waste_cli.core.errors import DataError
from waste_cli.core.formats import plain_cell
from waste_cli.data.detections import Detection, read_detections
from waste_cli.data.scan import class_folders, is_image_path, list_images

__all__ = ["Item", "Queue", "load_queue", "order_items", "pixel_vectors"]

TOP = 3
SIMILAR = 0.9  # fingerprint similarity above which --order diverse holds an item back
RECENT = 20  # --order diverse compares each pick with this many items before it


@dataclass
class Item:
    """One thing to decide on."""

    key: str  # stable across restarts: the file, and the annotation id of a box
    path: Path
    label: str = ""  # the given label ("" when there is none)
    guesses: list[tuple[str, float]] = field(default_factory=list)  # calibrated, best first
    note: str = ""  # why it is in the queue (an audit issue, a flag)
    box: tuple[float, float, float, float] | None = None  # COCO x, y, w, h
    annotation: Any = None  # the COCO annotation id
    flagged: bool = False  # predict flagged it: shown before the rest
    original: str = ""  # the source photo a prepared copy was made from (audit of a prepare root)

    @property
    def margin(self) -> float:
        """Top guess minus the second: small = the model cannot decide (1 without guesses)."""
        if not self.guesses:
            return 1.0
        second = self.guesses[1][1] if len(self.guesses) > 1 else 0.0
        return self.guesses[0][1] - second


@dataclass
class Queue:
    items: list[Item]
    classes: list[str]
    roots: list[Path]  # every item's file lies inside one of these
    kind: str  # audit, predict, pseudolabel, folder, coco
    source: Path
    coco: dict[str, Any] | None = None  # the COCO file's data, for --export

    def inside(self, path: Path) -> bool:
        resolved = path.resolve()
        return any(resolved.is_relative_to(root) for root in self.roots)


def _resolve(name: str, bases: list[Path]) -> Path:
    given = Path(name)
    if given.is_absolute():
        return given
    for base in bases:
        if (base / given).exists():
            return base / given
    return bases[0] / given


def _from_audit(folder: Path) -> tuple[list[Item], list[str], list[Path]]:
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        rows, classes = report["rows"], [str(c) for c in report["classes"]]
        root = Path(report["root"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{folder / 'report.json'} is not an audit report ({exc}). Give a "
                        "folder written by `wastecls audit`.") from None
    by_path: dict[str, Item] = {}
    for row in rows:
        item = by_path.get(row["path"])
        if item is None:
            guesses = [(str(c), float(p)) for c, p in row.get("top", [])]
            item = by_path[row["path"]] = Item(row["path"], Path(row["path"]),
                                               str(row["label"]), guesses,
                                               original=str(row.get("original") or ""))
        item.note = "; ".join(filter(None, [item.note, f"{row['issue']}: {row['detail']}"]))
    return list(by_path.values()), classes, [root]


def _top_from_row(row: dict[str, str]) -> list[tuple[str, float]]:
    guesses = []
    for k in range(1, 10):
        if row.get(f"label{k}") and row.get(f"prob{k}"):
            guesses.append((plain_cell(row[f"label{k}"]), float(row[f"prob{k}"])))
    if not guesses and row.get("label") and row.get("confidence"):
        guesses.append((plain_cell(row["label"]), float(row["confidence"])))
    return guesses[:TOP]


def _from_table(path: Path, roots: list[Path]) -> tuple[list[Item], str]:
    """A predict CSV / JSON lines, or a pseudolabel manifest (it has `accepted`)."""
    bases = [Path.cwd(), path.parent]
    items, kind = [], "predict"
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            if path.suffix.lower() == ".csv":
                rows = list(csv.DictReader(handle))
                if rows and "accepted" in rows[0]:
                    kind = "pseudolabel"
            else:
                rows = [json.loads(line) for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise DataError(f"Cannot read {path}: {exc}. Give a predict CSV/JSON, a pseudolabel "
                        "manifest, an audit folder, a folder of photos or a COCO file.") from None
    if rows and not all(isinstance(r, dict) and r.get("path") for r in rows):
        raise DataError(f"{path} has rows without a 'path': it is not a predict or pseudolabel "
                        "output.")
    for row in rows:
        if row.get("error"):
            continue
        try:
            if "labels" in row:  # predict's JSON
                guesses = [(str(c), float(p)) for c, p in zip(row["labels"], row["probs"],
                                                              strict=False)][:TOP]
            else:
                guesses = _top_from_row(row)
        except (TypeError, ValueError):
            raise DataError(f"{path}: the row of {row['path']!r} has a probability that is "
                            "not a number.") from None
        name = plain_cell(str(row["path"]))
        label = plain_cell(str(row.get("label", ""))) if kind == "pseudolabel" else ""
        items.append(Item(name, _resolve(name, bases), label, guesses,
                          note=str(row.get("flag") or ""),
                          flagged=bool(row.get("flag"))))
    return items, kind


def load_queue(source: Path, images: Path | None, categories: list[str], classes: list[str],
               guess: Callable[[list[Item]], list[str]], reporter: Reporter) -> Queue:
    """The items of `source`; `guess` fills in guesses where the source has none (and
    returns the model's classes)."""
    if not source.exists():
        raise DataError(f"{source} does not exist. Give an audit folder, a predict CSV/JSON, a "
                        "pseudolabel manifest, a folder of photos or a COCO file (--images).")
    coco = None
    if source.is_dir() and (source / "report.json").is_file():
        items, found, roots = _from_audit(source)
        kind = "audit"
    elif source.is_dir():
        kind, roots = "folder", [source]
        labelled = class_folders(source)
        items = [Item(str(p), p, p.parent.name if labelled and p.parent != source else "")
                 for p in list_images(source)]
        found = labelled
    elif source.suffix.lower() == ".json" and (coco := _coco_data(source)) is not None:
        if images is None:
            raise DataError(f"{source} is a COCO file: say where its images are with "
                            "--images DIR.")
        items, found = _from_coco(source, images, categories, reporter)
        kind, roots = "coco", [images]
    elif source.suffix.lower() in (".csv", ".json", ".jsonl"):
        roots = [images] if images is not None else [source.parent]
        items, kind = _from_table(source, roots)
        found = sorted({i.label for i in items if i.label})
    else:
        raise DataError(f"{source} is not a source review reads. Give an audit folder, a "
                        "predict CSV/JSON, a pseudolabel manifest, a folder of photos, or a COCO "
                        ".json with --images DIR.")
    roots = [r.resolve() for r in roots]
    queue = Queue([], list(classes) or list(found), roots, kind, source, coco)
    outside = [i for i in items if not queue.inside(i.path) or not is_image_path(i.path)]
    if outside:
        reporter.warn(f"{len(outside)} of {source}'s rows name a file that is not an image "
                      f"inside {', '.join(map(str, roots))} (first: {outside[0].key}); they are "
                      "left out. Give --images DIR to review photos of another folder.")
    queue.items = [i for i in items if i not in outside]
    if kind in ("folder", "coco"):  # the others carry their guesses (or have none to give)
        model_classes = guess([i for i in queue.items if not i.guesses])
        if not classes:
            queue.classes = sorted(set(queue.classes) | set(model_classes)) \
                if queue.classes else list(model_classes)
    for item in queue.items:  # a given label or guess outside the list still shows
        for name in [item.label, *(c for c, _ in item.guesses)]:
            if name and name not in queue.classes:
                queue.classes.append(name)
    if not queue.items:
        raise DataError(f"Nothing to review in {source}.")
    return queue


def _coco_data(path: Path) -> dict[str, Any] | None:
    """The file's data when it is COCO (one JSON object with annotations; predict's JSON is
    an object per line), else None. Kept for --export, which writes it back corrected."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) and "annotations" in data else None


def _from_coco(source: Path, images: Path, categories: list[str], reporter: Reporter
               ) -> tuple[list[Item], list[str]]:
    found, skipped = read_detections(source, images)
    if skipped:
        reporter.warn(f"{len(skipped)} boxes of {source} skipped (bad box, unknown or missing "
                      "image)")
    wanted = set(categories)
    known = sorted({d.category for d in found if d.category})
    if wanted - set(known):
        raise DataError(f"{source} has no category {', '.join(sorted(wanted - set(known)))}. "
                        f"Its categories: {', '.join(known)}.")
    chosen: list[Detection] = [d for d in found if not wanted or d.category in wanted]
    items = [Item(f"{d.image}#{d.record.get('id', k)}", d.image, d.category or "",
                  box=d.region.box, annotation=d.record.get("id"))
             for k, d in enumerate(chosen)]
    return items, known


def _similarity(vectors: np.ndarray, k: int, recent: list[int]) -> float:
    if not recent:
        return 0.0
    return float((vectors[recent] @ vectors[k]).max())


def order_items(items: list[Item], order: str, vectors: np.ndarray | None = None
                ) -> list[Item]:
    """`given`: as read; `margin`: flagged first, then the smallest margin first; `diverse`:
    margin order, but an item much like one of the last RECENT picks (unit `vectors`, e.g.
    fingerprints) waits until nothing else is left."""
    if order == "given":
        return list(items)
    ranked = sorted(range(len(items)), key=lambda k: (not items[k].flagged, items[k].margin))
    if order == "margin" or vectors is None:
        return [items[k] for k in ranked]
    picked: list[int] = []
    waiting = ranked
    while waiting:
        held = []
        for k in waiting:
            if _similarity(vectors, k, picked[-RECENT:]) < SIMILAR:
                picked.append(k)
            else:
                held.append(k)
        if len(held) == len(waiting):  # all alike: take them in margin order
            picked += held
            break
        waiting = held
    return [items[k] for k in picked]


def pixel_vectors(paths: list[Path], workers: int, reporter: Reporter) -> np.ndarray:
    """One unit vector per photo for --order diverse: its fingerprint's whole-photo
    low-frequency coefficients (a blank row for an unreadable photo)."""
    from waste_cli.data.photos import read_facts

    facts = read_facts(paths, workers, reporter)
    width = next((f.fingerprint.windows.shape[1] for f in facts if f.fingerprint), 1)
    rows = np.zeros((len(paths), width), np.float32)
    for k, fact in enumerate(facts):
        if fact.fingerprint is not None:
            rows[k] = fact.fingerprint.windows[0]
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)

