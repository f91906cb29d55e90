"""`wastecls pseudolabel`: label an unlabelled folder with a trained model, as a manifest that
`train --extra-labels` reads back, and optionally as sorted copies. An image is accepted when
its calibrated probability reaches --threshold and it does not look unfamiliar."""

from __future__ import annotations

import io
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waste_cli.confidence.fit import UNFAMILIAR
from waste_cli.core.console import Reporter
from waste_cli.core.errors import ConfigError
from waste_cli.core.files import (
    atomic_path,
    atomic_write_text,
    check_no_overlap,
    claim_file,
    ensure_writable,
    file_sha256,
    record_written,
)
from waste_cli.core.formats import csv_writer
from waste_cli.core.names import safe_name
from waste_cli.data.scan import PSEUDO_SPLIT
from waste_cli.infer.core import ClassifyOptions, expand_inputs, open_model, predict_stream
from waste_cli.model.builtin import find_model
from waste_cli.model.checkpoint import load_checkpoint
from waste_cli.options import PseudolabelOptions, stored_options, write_config

__all__ = ["PseudolabelResult", "pseudolabel"]


@dataclass
class PseudolabelResult:
    manifest: Path
    model: Path
    images: int
    accepted: dict[str, list[float]]  # class -> confidences of the accepted images
    failed: list[Any]


def _default_pool(model_path: Path) -> Path:
    """ROOT/pseudolabel of the data the checkpoint was trained on."""
    if model_path.suffix.lower() == ".pt":
        data = stored_options(load_checkpoint(model_path)).get("data")
        if data and (Path(data) / PSEUDO_SPLIT).is_dir():
            return Path(data) / PSEUDO_SPLIT
    raise ConfigError("Say which folder to label with --data DIR (the model's training data "
                      "has no pseudolabel/ folder).")


def _copy_target(folder: Path, image: Path, taken: set[Path]) -> Path | None:
    """Where to copy `image`: folder/<its name>, or NAME-1, NAME-2 ... when this run or anyone
    else has that name; None when the folder already holds this very photo (an earlier run
    sorted it), so that running again adds no second copy."""
    target, counter = folder / image.name, 0
    while target in taken or target.exists() or target.is_symlink():
        if target not in taken and _same_file_contents(target, image):
            taken.add(target)
            return None
        counter += 1
        target = folder / f"{image.stem}-{counter}{image.suffix}"
    taken.add(target)
    return target


def _same_file_contents(a: Path, b: Path) -> bool:
    try:
        return (a.is_file() and not a.is_symlink() and a.stat().st_size == b.stat().st_size
                and file_sha256(a) == file_sha256(b))
    except OSError:
        return False


def pseudolabel(options: PseudolabelOptions, reporter: Reporter | None = None
                ) -> PseudolabelResult:
    """Label an unlabelled folder: a manifest of every image, and accepted copies if asked."""
    reporter = reporter or Reporter(options.quiet)
    model_path = find_model(options.model, reporter)
    folder = options.data or _default_pool(model_path)
    check_no_overlap([("--out", options.out), ("--copy-to", options.copy_to)],
                     [("model", model_path), ("data", folder)])
    claim_file(options.out, "pseudolabel", options.overwrite, "--out")
    runner = open_model(model_path, options.device, options.backend, reporter)
    # Class names come from the model file: each must be a safe folder name before any copy.
    folders = {name: options.copy_to / safe_name(name, f"a class of {model_path}")
               for name in runner.classes} if options.copy_to is not None else {}
    if options.copy_to is not None:
        ensure_writable(options.copy_to, "--copy-to folder")
        write_config(options, options.copy_to / "config.yaml")
    paths, failed = expand_inputs([str(folder)])
    classify = ClassifyOptions(top_k=2, exclude_class=tuple(options.exclude_class),
                              batch_size=options.batch_size, workers=options.workers)
    accepted: dict[str, list[float]] = defaultdict(list)
    rows, names = [["path", "label", "confidence", "margin", "flag", "accepted"]], set()
    for item in predict_stream(runner, paths, classify, reporter):
        if item.error:
            failed.append(item)
            continue
        confidence = item.probs[0]
        margin = confidence - (item.probs[1] if len(item.probs) > 1 else 0.0)
        ok = confidence >= options.threshold and item.flag != UNFAMILIAR
        rows.append([str(item.path.resolve()), item.labels[0], f"{confidence:.6f}",
                     f"{margin:.6f}", item.flag, "1" if ok else "0"])
        if ok:
            accepted[item.labels[0]].append(confidence)
            if options.copy_to is not None:
                target = _copy_target(folders[item.labels[0]], item.path, names)
                if target is not None:
                    with atomic_path(target) as tmp:  # a killed run leaves no half-copy
                        shutil.copy2(item.path, tmp)
    buffer = io.StringIO()
    csv_writer(buffer).writerows(rows)
    atomic_write_text(options.out, buffer.getvalue())
    record_written(options.out, "pseudolabel")
    return PseudolabelResult(options.out, model_path, len(rows) - 1, dict(accepted), failed)
