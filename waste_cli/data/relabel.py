"""Corrections of labels as a manifest (what `review --export` writes): read it, and apply it
to the photos `prepare` is about to place.

The manifest is a CSV with the columns `path,label,accepted,decision,given,original`:
- decision `relabel` or `confirm`: the photo's class is `label` (accepted 1), which `train
  --extra-labels` reads too;
- decision `drop`: the photo leaves the dataset (accepted 0: training never reads it).
A photo is matched by its file (`path`) or by the source photo it was made from (`original`,
when `path` is a prepared copy), both resolved.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from waste_cli.core.errors import DataError
from waste_cli.core.formats import plain_cell
from waste_cli.core.names import safe_name
from waste_cli.data.sources import SourceImage

__all__ = ["DECISIONS", "MANIFEST_COLUMNS", "Relabels", "apply_relabels", "read_relabels"]

MANIFEST_COLUMNS = ("path", "label", "accepted", "decision", "given", "original")
DECISIONS = ("relabel", "confirm", "drop")


@dataclass
class Relabels:
    """What a manifest asks: resolved photo path -> its new class, or None to drop it."""

    manifest: Path
    changes: dict[str, str | None] = field(default_factory=dict)
    rows: list[tuple[str, ...]] = field(default_factory=list)  # each row's keys


def _key(path: str, base: Path) -> str:
    given = Path(path)
    return os.path.normcase(os.path.realpath(given if given.is_absolute() else base / given))


def read_relabels(manifest: Path) -> Relabels:
    """The corrections of a manifest; a row without a decision column counts as `relabel`
    when accepted (1 or absent) and is ignored otherwise."""
    try:
        with open(manifest, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"Cannot read the --relabel manifest {manifest}: {exc}") from None
    if rows and not {"path", "label"} <= set(rows[0]):
        raise DataError(f"The --relabel manifest {manifest} needs 'path' and 'label' columns "
                        "(as `wastecls review --export` writes).")
    relabels = Relabels(manifest)
    for line, row in enumerate(rows, start=2):
        decision = plain_cell(row.get("decision") or "")
        if not decision:
            if row.get("accepted", "1") not in ("1", "true", "True"):
                continue
            decision = "relabel"
        if decision not in DECISIONS:
            raise DataError(f"Line {line} of {manifest} has the decision {decision!r}; "
                            f"expected one of {', '.join(DECISIONS)}.")
        label = plain_cell(row.get("label") or "")
        if decision != "drop":
            label = safe_name(label, f"the label on line {line} of {manifest}")
        keys = tuple(_key(plain_cell(row[column]), manifest.parent)
                     for column in ("path", "original") if row.get(column))
        relabels.rows.append(keys)
        for key in keys:
            relabels.changes[key] = None if decision == "drop" else label
    return relabels


def apply_relabels(sources: list[SourceImage], relabels: Relabels
                   ) -> tuple[list[SourceImage], dict[str, Any]]:
    """`sources` with each matched whole photo moved to its new class or left out, and the
    report of it (`relabelled`: file, from, to; `dropped`: files; `unmatched`: rows that name
    no photo of the sources)."""
    kept, relabelled, dropped, matched = [], [], [], set()
    for source in sources:
        key = _key(str(source.path), Path.cwd())
        if key not in relabels.changes or any(job.box is not None for job in source.jobs):
            kept.append(source)
            continue
        matched.add(key)
        label = relabels.changes[key]
        if label is None:
            dropped.append(str(source.path))
            continue
        before = source.jobs[0].label
        if label != before:
            relabelled.append({"file": str(source.path), "from": before, "to": label})
        kept.append(replace(source, jobs=tuple(replace(job, label=label)
                                               for job in source.jobs)))
    return kept, {"manifest": str(relabels.manifest), "relabelled": relabelled,
                  "dropped": dropped,
                  "unmatched": sum(not matched.intersection(keys) for keys in relabels.rows)}
