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

from waste_cli.checkpoint import load_checkpoint
from waste_cli.console import Reporter
from waste_cli.data.scan import PSEUDO_SPLIT
from waste_cli.errors import ConfigError
from waste_cli.familiarity import UNFAMILIAR
from waste_cli.fileio import (
    atomic_path,
    atomic_write_text,
    check_no_overlap,
    csv_writer,
    ensure_file_writable,
    ensure_writable,
    safe_name,
)
from waste_cli.inference import (
    ClassifyOptions,
    expand_inputs,
    find_model,
    open_model,
    predict_stream,
)
from waste_cli.settings import PseudolabelOptions

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
        data = load_checkpoint(model_path).get("settings", {}).get("data")
        if data and (Path(data) / PSEUDO_SPLIT).is_dir():
            return Path(data) / PSEUDO_SPLIT
    raise ConfigError("Say which folder to label with --data DIR (the model's training data "
                      "has no pseudolabel/ folder).")


def _free_name(folder: Path, image: Path, taken: set[Path]) -> Path:
    """folder/<image's name>, or NAME-1, NAME-2 ... when this run or anyone else has it."""
    target, counter = folder / image.name, 0
    while target in taken or target.exists() or target.is_symlink():
        counter += 1
        target = folder / f"{image.stem}-{counter}{image.suffix}"
    taken.add(target)
    return target


def pseudolabel(settings: PseudolabelOptions, reporter: Reporter | None = None
                ) -> PseudolabelResult:
    """Label an unlabelled folder: a manifest of every image, and accepted copies if asked."""
    reporter = reporter or Reporter(settings.quiet)
    model_path = find_model(settings.model, reporter)
    folder = settings.data or _default_pool(model_path)
    check_no_overlap([("--out", settings.out), ("--copy-to", settings.copy_to)],
                     [("model", model_path), ("data", folder)])
    ensure_file_writable(settings.out, "--out")
    runner = open_model(model_path, settings.device, settings.backend, reporter)
    # Class names come from the model file: each must be a safe folder name before any copy.
    folders = {name: settings.copy_to / safe_name(name, f"a class of {model_path}")
               for name in runner.classes} if settings.copy_to is not None else {}
    if settings.copy_to is not None:
        ensure_writable(settings.copy_to, "--copy-to folder")
    paths, failed = expand_inputs([str(folder)])
    options = ClassifyOptions(top_k=2, exclude_class=tuple(settings.exclude_class),
                              batch_size=settings.batch_size, workers=settings.workers)
    accepted: dict[str, list[float]] = defaultdict(list)
    rows, names = [["path", "label", "confidence", "margin", "flag", "accepted"]], set()
    for item in predict_stream(runner, paths, options, reporter):
        if item.error:
            failed.append(item)
            continue
        confidence = item.probs[0]
        margin = confidence - (item.probs[1] if len(item.probs) > 1 else 0.0)
        ok = confidence >= settings.threshold and item.flag != UNFAMILIAR
        rows.append([str(item.path.resolve()), item.labels[0], f"{confidence:.6f}",
                     f"{margin:.6f}", item.flag, "1" if ok else "0"])
        if ok:
            accepted[item.labels[0]].append(confidence)
            if settings.copy_to is not None:
                target = _free_name(folders[item.labels[0]], item.path, names)
                with atomic_path(target) as tmp:  # a killed run leaves no half-copied image
                    shutil.copy2(item.path, tmp)
    buffer = io.StringIO()
    csv_writer(buffer).writerows(rows)
    atomic_write_text(settings.out, buffer.getvalue())
    return PseudolabelResult(settings.out, model_path, len(rows) - 1, dict(accepted), failed)
