"""`wastecls audit`: what in a dataset should be looked at by a person before anything is
trained or believed on it.

- Likely label errors: out-of-fold heads on features of a model (review/labels.py), then
  cleanlab; each with the suggested class and its calibrated probability.
- Copies within and across splits (leaks), and copies filed under two classes (conflicts): the
  near-duplicate detector `prepare` uses (data/duplicates.py).
- Outliers: photos far from the rest of their class.
- Unreadable, tiny, blank or very elongated photos, and the balance of classes.

Writes issues.csv (one row per issue), report.json (every number, and each row with the
model's top 3 for `review`) and index.html (thumbnails by issue; one file, works offline).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from waste_cli.core.console import Reporter
from waste_cli.core.errors import DataError
from waste_cli.core.extras import require
from waste_cli.core.files import atomic_write_text, check_no_overlap, claim_folder, write_json
from waste_cli.core.formats import csv_writer
from waste_cli.data.duplicates import copy_groups, find_copies
from waste_cli.data.photos import FLAT_SPREAD, read_facts
from waste_cli.data.scan import SPLITS, class_folders, class_samples, manifest_column
from waste_cli.options import AuditOptions, write_config
from waste_cli.review.audit_page import write_audit_page
from waste_cli.review.features import FeatureSource, read_features
from waste_cli.review.labels import check_labels, class_outliers
from waste_cli.review.store import DB_FILES

__all__ = ["AUDIT_FILES", "ISSUE_KINDS", "AuditResult", "audit", "dataset_photos"]

AUDIT_FILES = ("issues.csv", "report.json", "index.html", "config.yaml")
CSV_COLUMNS = ("path", "split", "label", "issue", "suggested", "score", "detail")
# Every kind of issue, most urgent first, with what a person should do about it.
ISSUE_KINDS = {
    "label": "the given label is probably wrong: check it against the suggested class",
    "conflict": "copies of one photo filed under different classes: keep one label",
    "leak": "copies of one photo in different splits: test figures count them twice",
    "duplicate": "copies of one photo in one split: they weigh more than others in training",
    "outlier": "unlike the rest of its class: a wrong label, an odd shot, or not waste",
    "unreadable": "cannot be decoded: replace or remove the file",
    "tiny": "too small to show much: the model sees it upscaled",
    "blank": "nearly one flat colour: probably not a photo of anything",
    "elongated": "a very long strip: the centre crop sees little of it",
}
TOP = 3  # guesses kept per row
MAX_ELONGATION = 4.0  # longer side over shorter side beyond which a photo is `elongated`


@dataclass
class Photo:
    path: Path
    split: str  # "" for class folders without splits
    label: int
    original: str = ""  # the source file a prepared photo was made from, when known


@dataclass
class AuditResult:
    out: Path
    report: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)  # issue kind -> rows


def dataset_photos(root: Path) -> tuple[list[Photo], list[str]]:
    """Every photo of a `prepare` root (all its splits) or of a folder of class folders."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder. Give a `prepare` root or a folder of class "
                        "folders (ROOT/<class>/*.jpg).")
    splits = [s for s in SPLITS if (root / s).is_dir()]
    folders = [(root / s, s) for s in splits] or [(root, "")]
    classes = sorted({name for folder, _ in folders for name in class_folders(folder)})
    if not classes:
        raise DataError(f"No class folders with images in {root}: audit needs labelled photos "
                        "(ROOT/<class>/*.jpg, or a `prepare` root).")
    originals = manifest_column(root, "original")  # the source photo of each copy
    index = {name: k for k, name in enumerate(classes)}
    photos = [Photo(path, split, label, originals.get(os.path.normpath(path), ""))
              for folder, split in folders for path, label in class_samples(folder, index)]
    return photos, classes


def _out_folder(options: AuditOptions) -> Path:
    return options.out or Path("runs") / "audit" / (options.root.resolve().name or "root")


def audit(options: AuditOptions, reporter: Reporter | None = None) -> AuditResult:
    reporter = reporter or Reporter(options.quiet)
    require("audit", "review", "cleanlab", "sklearn")
    started = time.perf_counter()
    photos, classes = dataset_photos(options.root)
    out = _out_folder(options)
    check_no_overlap([("--out", out)], [("dataset", options.root), ("model", options.model),
                                        ("--weights", options.weights)])
    claim_folder(out, "audit", AUDIT_FILES, options.overwrite, "--out folder",
                 shared=DB_FILES)  # review's decisions on this audit stay
    reporter.info(f"audit: {len(photos)} photos, {len(classes)} classes")
    workers = options.workers if options.workers is not None else (os.cpu_count() or 1)
    seconds: dict[str, float] = {}

    tick = time.perf_counter()
    facts = read_facts([p.path for p in photos], workers, reporter)
    seconds["read"] = time.perf_counter() - tick

    tick = time.perf_counter()
    readable = [k for k, f in enumerate(facts) if f.readable]
    source = FeatureSource(options.model, options.arch, options.weights, options.img_size,
                           options.device, options.batch_size, options.workers, options.tta)
    read = read_features([(photos[k].path, photos[k].label) for k in readable], source, reporter)
    seconds["features"] = time.perf_counter() - tick
    unreadable_by_model = {readable[k] for k in read.unreadable}
    usable = [k for k in readable if k not in unreadable_by_model]
    keep = np.array([k not in unreadable_by_model for k in range(len(readable))], dtype=bool)
    features = read.features[keep]
    labels = np.array([photos[k].label for k in usable], dtype=np.int64)
    if len(usable) < 2:
        raise DataError(f"Fewer than two readable photos in {options.root}: nothing to audit.")

    tick = time.perf_counter()
    check = check_labels(features, labels, len(classes), options.folds, options.seed)
    distance, outlying = class_outliers(features, labels)
    seconds["labels"] = time.perf_counter() - tick

    probs = np.full((len(photos), len(classes)), np.nan)
    probs[usable] = check.probs
    rows: list[dict[str, Any]] = []

    def add(k: int, issue: str, score: float, detail: str = "", suggested: str = "") -> None:
        photo = photos[k]
        top = ([[classes[c], round(float(probs[k, c]), 4)]
                for c in np.argsort(-probs[k])[:TOP]] if np.isfinite(probs[k]).all() else [])
        rows.append({"path": str(photo.path.resolve()), "split": photo.split,
                     "label": classes[photo.label], "issue": issue, "suggested": suggested,
                     "score": round(float(score), 4), "detail": detail, "top": top,
                     "original": photo.original})

    for k in check.issues:
        photo = usable[k]
        best = int(np.argmax(check.probs[k]))
        add(photo, "label", 1 - check.probs[k, labels[k]],
            f"given {classes[labels[k]]} at {check.probs[k, labels[k]]:.0%}", classes[best])

    tick = time.perf_counter()
    groups = _copy_rows(options, photos, facts, classes, add, workers, reporter)
    seconds["copies"] = time.perf_counter() - tick

    for k in np.argsort(-distance):
        if outlying[k]:
            add(usable[k], "outlier", distance[k], "far from the rest of its class")
    smallest = max(32, read.input_size // 4)
    for k, fact in enumerate(facts):
        if not fact.readable:
            add(k, "unreadable", 1.0, fact.error)
        elif k in unreadable_by_model:
            add(k, "unreadable", 1.0, "the model's preprocessing could not read it")
        elif min(fact.size) < smallest:
            add(k, "tiny", smallest / max(min(fact.size), 1),
                f"{fact.size[0]}x{fact.size[1]} px (under {smallest} px)")
        elif fact.spread < FLAT_SPREAD:
            add(k, "blank", FLAT_SPREAD - fact.spread, f"grey spread {fact.spread:.1f} of 255")
        elif max(fact.size) / min(fact.size) > MAX_ELONGATION:
            add(k, "elongated", max(fact.size) / min(fact.size),
                f"{fact.size[0]}x{fact.size[1]} px")

    counts = {kind: sum(r["issue"] == kind for r in rows) for kind in ISSUE_KINDS}
    balance = _balance(photos, classes)
    seconds["total"] = time.perf_counter() - started
    report = {
        "root": str(options.root.resolve()), "classes": classes, "photos": len(photos),
        "features": {"model": read.described, "input_size": read.input_size},
        "label_check": {"folds": check.folds, "temperature": round(check.temperature, 4),
                        "out_of_fold_agreement": round(check.agreement, 4),
                        "method": "logistic regression + kNN, out of fold; cleanlab "
                                  "find_label_issues"},
        "issues": counts, "what_to_do": ISSUE_KINDS, "balance": balance,
        "copy_groups": groups, "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "rows": rows,
    }
    _write(out, rows, report, options, reporter)
    return AuditResult(out, report, counts)


def _copy_rows(options: AuditOptions, photos: list[Photo], facts: list[Any],
               classes: list[str], add: Any, workers: int, reporter: Reporter) -> int:
    """Rows for every photo in a group of copies; the number of groups."""
    if not options.near_duplicates:
        return 0
    pairs = find_copies([f.fingerprint for f in facts], workers, reporter)
    groups = copy_groups(len(photos), pairs)
    root = options.root.resolve()
    for group in groups:
        splits = {photos[k].split for k in group}
        labels = {photos[k].label for k in group}
        issue = "conflict" if len(labels) > 1 else "leak" if len(splits) > 1 else "duplicate"
        for k in group:
            others = [_relative(photos[j].path, root) for j in group if j != k]
            detail = "copy of " + ", ".join(others[:3]) + (" ..." if len(others) > 3 else "")
            if issue == "conflict":
                detail += " (filed as " + ", ".join(sorted(classes[c] for c in labels)) + ")"
            add(k, issue, len(group), detail)
    return len(groups)


def _relative(path: Path, root: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)


def _balance(photos: list[Photo], classes: list[str]) -> dict[str, Any]:
    """Photos per class (and per split), and the ratio of the largest class to the smallest."""
    per_class = np.bincount([p.label for p in photos], minlength=len(classes))
    per_split: dict[str, dict[str, int]] = {}
    for photo in photos:
        counts = per_split.setdefault(photo.split or "all", dict.fromkeys(classes, 0))
        counts[classes[photo.label]] += 1
    present = per_class[per_class > 0]
    return {"per_class": {c: int(n) for c, n in zip(classes, per_class, strict=True)},
            "per_split": per_split,
            "largest_over_smallest": round(float(present.max() / present.min()), 2)
            if len(present) else None}


def _write(out: Path, rows: list[dict[str, Any]], report: dict[str, Any],
           options: AuditOptions, reporter: Reporter) -> None:
    import io

    buffer = io.StringIO()
    writer = csv_writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([row[c] for c in CSV_COLUMNS])
    atomic_write_text(out / "issues.csv", buffer.getvalue())
    write_json(out / "report.json", report)
    write_audit_page(out / "index.html", report, reporter)
    write_config(options, out / "config.yaml")
