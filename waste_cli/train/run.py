"""`wastecls train`: resume or start, wire the Trainer from a resolved plan, fit, calibrate the
best model, and write the summary.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from waste_cli.confidence.calibrate import FitOptions, calibrate_checkpoint
from waste_cli.confidence.fit import FittedCalibration
from waste_cli.core.console import Reporter
from waste_cli.core.errors import ConfigError, DataError, WasteclsError
from waste_cli.core.files import check_no_overlap, ensure_writable, write_json
from waste_cli.core.runtime import (
    keep_freed_memory,
    resolve_device,
    seed_everything,
)
from waste_cli.data.scan import (
    PSEUDO_SPLIT,
    SPLITS,
)
from waste_cli.model.checkpoint import (
    ResumeCheckpoint,
    load_checkpoint,
    save_checkpoint,
)
from waste_cli.options import TrainOptions, stored_options, write_config
from waste_cli.train.distributed import (
    Distributed,
    init_distributed,
    newest_run,
)
from waste_cli.train.inputs import TrainData, load_train_data
from waste_cli.train.loop import Trainer
from waste_cli.train.recipe import resolve_run, resumed_options
from waste_cli.train.tracking import MetricsLog, NeptuneTracker, Tracker

__all__ = ["TrainResult", "TrainingInterrupted", "build_trainer", "train"]

class TrainingInterrupted(WasteclsError):
    """Ctrl-C: last.pt holds the last finished epoch."""

    exit_code = 130


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best: dict[str, Any]
    epochs_run: int
    stopped_early: bool
    skipped_images: list[str] = field(default_factory=list)
    seconds: float = 0.0
    calibration: FittedCalibration | None = None  # fitted on best.pt at the end
    wise_ft: dict[str, float] | None = None  # val acc fine-tuned and interpolated (--wise-ft)


def _resume(options: TrainOptions) -> tuple[TrainOptions, ResumeCheckpoint]:
    """The options of the run --resume continues (see `recipe.resumed_options`), and last.pt."""
    assert options.resume is not None  # the caller checked
    last: ResumeCheckpoint = load_checkpoint(options.resume / "last.pt")  # type: ignore[assignment]
    if "train_state" not in last:
        raise ConfigError(f"{options.resume / 'last.pt'} holds no training state; --resume "
                          "takes a run folder written by `wastecls train`.")
    merged = resumed_options(options, last, options.resume)
    if merged.epochs != stored_options(last).get("epochs"):  # re-plan the schedule to the length
        last = {k: v for k, v in last.items() if k != "scheduler"}  # type: ignore[assignment]
    return merged.model_copy(update={"resume": options.resume}), last


def _check_resumed_classes(data: TrainData, last: ResumeCheckpoint, where: Path) -> None:
    """A resumed run's data must still have the classes, in the order, its weights learnt."""
    if data.classes == list(last["classes"]):
        return
    added = sorted(set(data.classes) - set(last["classes"]))
    gone = sorted(set(last["classes"]) - set(data.classes))
    what = (f"classes added: {', '.join(added) or '-'}; removed: {', '.join(gone) or '-'}"
            if added or gone else f"the order changed: {', '.join(last['classes'])} -> "
            f"{', '.join(data.classes)}")
    raise DataError(f"The dataset no longer matches the run in {where} ({what}). Its weights "
                    "belong to the old classes: start a new run (e.g. with --weights "
                    f"{where / 'best.pt'}) instead of --resume.")


def _check_outputs(options: TrainOptions) -> None:
    """Before any work: the run folder may be written, and overlaps no input."""
    runs = options.resume or options.project
    data = options.data
    check_no_overlap(
        [("run folder", options.resume or options.project / options.name)],
        [*((f"{split} images", data / split) for split in (*SPLITS, PSEUDO_SPLIT)
           if data is not None),
         ("--pseudo-data", options.pseudo_data), ("--weights", options.weights),
         *(("--extra-labels", path) for path in options.extra_labels)])
    ensure_writable(runs, "run folder")


def _calibrate_best(trainer: Trainer) -> FittedCalibration:
    """Fit best.pt's temperature and unfamiliarity threshold on the run's own train and val
    images, and write them into it (the run wrote best.pt: rewriting it loses nothing)."""
    best = trainer.run_dir / "best.pt"
    options = trainer.options
    fit = FitOptions(options.familiar_share, options.min_confidence, workers=options.workers)
    return calibrate_checkpoint(best, best, trainer.data.train, trainer.data.val, fit,
                                trainer.device, trainer.reporter)


def _summary(trainer: Trainer, result: TrainResult) -> dict[str, Any]:
    calibration = result.calibration
    return {"best_epoch": result.best_epoch, "monitor": trainer.options.monitor,
            "best": result.best, "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early, "skipped_images": result.skipped_images,
            "seconds": result.seconds, "classes": trainer.data.classes,
            "train_images": len(trainer.data.train), "val_images": len(trainer.data.val),
            "device": str(trainer.device), "processes": trainer.dist.world,
            "data_config": trainer.data_config, "wise_ft": result.wise_ft,
            "calibration": calibration.calibration.model_dump() | calibration.report
            if calibration is not None else None}


def build_trainer(options: TrainOptions, reporter: Reporter, dist: Distributed,
                  device: torch.device, last: ResumeCheckpoint | None = None) -> Trainer:
    """Read the data, resolve the run's plan (printing every `auto` choice once), and wire a
    Trainer from them."""
    if dist.active and options.freeze_epochs not in (0, "auto"):
        raise ConfigError("--freeze-epochs is not supported with several processes (DDP "
                          "needs the same trainable parameters throughout); use "
                          "--freeze-backbone.")
    if dist.active and options.wise_ft < 1:
        raise ConfigError("--wise-ft is not supported with several processes yet: train with "
                          "--nproc 1, or leave --wise-ft at 1.")
    seed_everything(options.seed)
    if device.type == "cpu":
        keep_freed_memory()
    data = load_train_data(options, reporter)
    if last is not None:
        _check_resumed_classes(data, last, options.resume or Path("."))
    plan = resolve_run(options, device, [p for p, _ in (*data.train, *data.val)], last)
    for choice in plan.choices:
        reporter.info(str(choice))
    return Trainer(plan, data, reporter, dist, device)


def _restarted(options: TrainOptions) -> TrainOptions:
    """Under a torchrun restart of a failed job (--max-restarts), the newest run continues."""
    if options.resume is None and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) >= 1:
        return options.model_copy(update={"resume": newest_run(options.project, options.name)})
    return options


def train(options: TrainOptions, reporter: Reporter | None = None) -> TrainResult:
    """Train a classifier; write the run folder; return the best epoch's metrics.

    Under torchrun (WORLD_SIZE > 1) every process runs this; rank 0 alone prints and writes.
    """
    dist, device = init_distributed(resolve_device(options.device))
    options = _restarted(options)
    last = None
    if options.resume is not None:
        options, last = _resume(options)
    elif options.data is not None:  # stored absolute: the run resumes from any folder
        options = options.model_copy(update={"data": options.data.absolute()})
    reporter = reporter if reporter is not None and dist.main else Reporter(
        options.quiet or not dist.main)
    trackers: list[Tracker] = []
    if options.neptune and dist.main:
        trackers.append(NeptuneTracker(json.loads(options.model_dump_json()),
                                       options.neptune_mode, options.neptune_project,
                                       options.name))
    if dist.main:
        _check_outputs(options)
    try:
        trainer = build_trainer(options, reporter, dist, device, last)
        run = trainer.run_dir
        log = MetricsLog.resume(run / "metrics.csv", trainer.state["epoch"], write=dist.main)
        options = trainer.options  # every `auto` resolved
        if dist.main:
            write_config(options, run / "config.yaml")
            if last is None:
                save_checkpoint(run / "last.pt", dict(trainer.resume_checkpoint(0, {})))
        reporter.info(f"training {options.arch} on {len(trainer.data.train)} images "
                      f"({len(trainer.data.val)} val, {len(trainer.data.classes)} classes) on "
                      f"{device}{f' x {dist.world} processes' if dist.active else ''}; "
                      f"run folder {run}")
        start_time = time.perf_counter()
        try:
            stopped_early = trainer.fit(log, trackers)
        except KeyboardInterrupt:
            epoch = trainer.state["epoch"]
            raise TrainingInterrupted(
                f"Interrupted during epoch {epoch + 1}. {run / 'last.pt'} holds epoch {epoch}; "
                f"continue with: wastecls train --resume {run}"
            ) from None
    finally:
        if dist.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    state = trainer.state
    best_row = next(r for r in log.rows if int(r["epoch"]) == state["best_epoch"])
    result = TrainResult(run, state["best_epoch"], best_row, state["epoch"], stopped_early,
                         state["skipped"])
    if dist.main and options.wise_ft < 1:
        shares = trainer.interpolate_best()
        result.wise_ft = shares
        reporter.info(f"WiSE-FT {options.wise_ft:g}: val acc {shares['interpolated']:.4f} "
                      f"(fine-tuned alone {shares['fine_tuned']:.4f}); best.pt holds the "
                      "interpolated weights")
    if dist.main:
        result.calibration = _calibrate_best(trainer)
        result.seconds = time.perf_counter() - start_time
        summary = _summary(trainer, result)
        write_json(run / "summary.json", summary)
        for tracker in trackers:
            tracker.finish(summary, {"confusion_matrix": run / "confusion_matrix.png",
                                     "curves": run / "curves.png",
                                     "classification_report": run / "val_report.json"})
    return result
