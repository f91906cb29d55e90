"""`wastecls review`: serve the review page over a queue, or (--export) write its decisions
as a manifest (`train --extra-labels`, `prepare --relabel`) or a corrected COCO file.
"""

from __future__ import annotations

import copy
import io
import secrets
from pathlib import Path
from typing import Any

from waste_cli.core.console import Reporter
from waste_cli.core.errors import ConfigError
from waste_cli.core.extras import require
from waste_cli.core.files import (
    atomic_write_text,
    check_no_overlap,
    claim_file,
    record_written,
)
from waste_cli.core.formats import csv_writer, json_text
from waste_cli.core.network import Server, check_token, is_loopback, listen
from waste_cli.data.relabel import MANIFEST_COLUMNS
from waste_cli.options import ReviewOptions
from waste_cli.review.queue import Item, Queue, load_queue, order_items, pixel_vectors
from waste_cli.review.store import DB_NAME, DecisionStore

__all__ = ["export_decisions", "open_review", "review_database", "serve"]


def review_database(options: ReviewOptions) -> Path:
    """--db, else review.sqlite beside SOURCE (inside an audit or photo folder)."""
    if options.db is not None:
        return options.db
    source = options.source
    return (source if source.is_dir() else source.parent) / DB_NAME


def _guesser(options: ReviewOptions, reporter: Reporter) -> Any:
    """Fill in the top 3 of the model for items without guesses; the model's classes."""

    def guess(items: list[Item]) -> list[str]:
        from waste_cli.data.batching import EvalImages
        from waste_cli.data.detections import Region
        from waste_cli.infer.core import ClassifyOptions, classify, open_model
        from waste_cli.model.builtin import find_model

        runner = open_model(find_model(options.model, reporter), "auto", "auto", reporter)
        regions = [Region(i.box) if i.box is not None else None for i in items]
        images = EvalImages([(i.path, 0) for i in items], runner.data_config,
                            regions if any(regions) else None, runner.crop)
        for k, answer in classify(runner, images, ClassifyOptions(top_k=3), reporter,
                                  what="guess"):
            items[k].guesses = list(zip(answer.labels, answer.probs, strict=True))
            if answer.flag:
                items[k].note = "; ".join(filter(None, [items[k].note, answer.flag]))
            elif answer.error:
                items[k].note = answer.error
        return runner.classes

    return guess


def open_review(options: ReviewOptions, reporter: Reporter) -> tuple[Queue, DecisionStore]:
    queue = load_queue(options.source, options.images, options.category, options.classes,
                       _guesser(options, reporter), reporter)
    vectors = (pixel_vectors([i.path for i in queue.items], 0, reporter)
               if options.order == "diverse" else None)
    queue.items = order_items(queue.items, options.order, vectors)
    return queue, DecisionStore(review_database(options))


def export_decisions(queue: Queue, store: DecisionStore, target: Path, overwrite: bool
                     ) -> dict[str, int]:
    """Write the decisions: a COCO file for a COCO source given a .json target, else the CSV
    manifest. Skipped items are not written."""
    check_no_overlap([("--export", target)], [("source", queue.source), ("decisions", store.path)])
    claim_file(target, "review", overwrite, "--export file")
    decided = store.decided()
    counts = {"relabel": 0, "confirm": 0, "drop": 0}
    rows = []
    for item in queue.items:
        decision = decided.get(item.key)
        if decision is None or decision["action"] == "skip":
            continue
        if decision["action"] == "drop":
            kind = "drop"
        else:
            kind = "confirm" if decision["label"] == item.label else "relabel"
        counts[kind] += 1
        rows.append((item, kind, decision["label"] if kind != "drop" else item.label))
    if queue.coco is not None and target.suffix.lower() == ".json":
        text = json_text(_corrected_coco(queue.coco, rows), indent=1) + "\n"
    elif target.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv_writer(buffer)
        writer.writerow(MANIFEST_COLUMNS)
        for item, kind, label in rows:
            writer.writerow([str(item.path.resolve()), label, "0" if kind == "drop" else "1",
                             kind, item.label, item.original])
        text = buffer.getvalue()
    else:
        raise ConfigError(f"--export {target}: name a .csv manifest"
                          + (" or a .json COCO file." if queue.coco is not None else "."))
    atomic_write_text(target, text)
    record_written(target, "review")
    return counts


def _corrected_coco(data: dict[str, Any], rows: list[tuple[Item, str, str]]) -> dict[str, Any]:
    """The COCO data with each decided box's category set to its label (a new category when
    the label is none of them) and dropped boxes removed."""
    data = copy.deepcopy(data)
    categories = data.setdefault("categories", [])
    by_name = {str(c.get("name")): c.get("id") for c in categories if isinstance(c, dict)}
    numbers = [c.get("id") for c in categories if isinstance(c.get("id"), int)]
    next_id = max(numbers, default=0) + 1
    change, drop = {}, set()
    for item, kind, label in rows:
        if kind == "drop":
            drop.add(item.annotation)
            continue
        if label not in by_name:
            categories.append({"id": next_id, "name": label, "supercategory": "review"})
            by_name[label], next_id = next_id, next_id + 1
        change[item.annotation] = by_name[label]
    kept = []
    for annotation in data.get("annotations", []):
        key = annotation.get("id") if isinstance(annotation, dict) else None
        if key in drop:
            continue
        if key in change:
            annotation["category_id"] = change[key]
        kept.append(annotation)
    data["annotations"] = kept
    return data


def serve(options: ReviewOptions, queue: Queue, store: DecisionStore) -> Server:
    """The app and where it will listen; a host other than loopback gets a token."""
    require("review", "review", "fastapi", "uvicorn")
    from waste_cli.review.web import create_app

    token = options.token
    if not is_loopback(options.host) and token is None:
        token = secrets.token_urlsafe(24)
    check_token(token)
    return listen(create_app(queue, store, token), options.host, options.port, token)
