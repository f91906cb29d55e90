"""`wastecls train`: fine-tune a timm model, keep the best checkpoint, survive interruption.

Read it top to bottom: `train()` sets up (data, model, optimiser, run folder), then runs the
epoch loop — train one epoch, validate, log, checkpoint, maybe stop. Each epoch's randomness
(shuffling, augmentation, dropout) is derived from (seed, epoch) alone, so a run resumed from
last.pt at epoch k replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn

from waste_cli import __version__
from waste_cli.console import Reporter
from waste_cli.data.loading import (
    ImageDataset,
    build_loader,
    cache_images,
    default_workers,
    weighted_sampler,
)
from waste_cli.data.prepare import split_groups
from waste_cli.data.scan import dataset_classes, labeled_samples
from waste_cli.data.transforms import data_config, eval_transform, train_transform
from waste_cli.errors import DataError, WasteclsError
from waste_cli.inference import iterate_logits, to_device
from waste_cli.metrics import classification_report, confusion_matrix
from waste_cli.models import create_model, load_checkpoint, resolve_arch, save_checkpoint
from waste_cli.plots import plot_confusion_matrix, plot_curves
from waste_cli.runtime import autocast, resolve_device, seed_everything
from waste_cli.settings import TrainSettings, write_config
from waste_cli.tracking import MetricsLog, NeptuneTracker, Tracker, new_run_dir, write_json

__all__ = ["TrainResult", "TrainingInterrupted", "load_train_data", "train"]

# Settings that describe this machine, not the experiment: a resumed run takes them anew.
MACHINE_SETTINGS = ("device", "workers", "quiet", "neptune", "neptune_mode", "neptune_project")
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc",
                  "val_macro_f1", "lr", "images_per_s", "seconds")


class TrainingInterrupted(WasteclsError):
    """Ctrl-C: last.pt holds the last finished epoch."""

    exit_code = 130


@dataclass
class TrainData:
    classes: list[str]
    train: list[tuple[Path, int]]
    val: list[tuple[Path, int]]


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best: dict[str, Any]
    epochs_run: int
    stopped_early: bool
    skipped_images: list[str] = field(default_factory=list)
    seconds: float = 0.0


def load_train_data(settings: TrainSettings) -> TrainData:
    """Training and validation samples; val is ROOT/val or a seeded share of train."""
    root = settings.data
    assert root is not None  # guaranteed by TrainSettings._check
    if not (root / "train").is_dir():
        raise DataError(
            f"{root} has no train/ folder. Point --data at a folder made by `wastecls prepare` "
            "(ROOT/train/<class>/, ROOT/val/<class>/)."
        )
    classes = dataset_classes(root)
    train = labeled_samples(root / "train", classes)
    missing = sorted(set(classes) - {classes[label] for _, label in train})
    if missing:
        raise DataError(f"Classes without training images in {root / 'train'}: "
                        f"{', '.join(missing)}.")
    val_dir = root / "val"
    if val_dir.is_dir() and any(val_dir.iterdir()):
        try:
            val = labeled_samples(val_dir, classes)
        except DataError as exc:
            raise DataError(f"A class is present in val but not in train. {exc}") from None
    else:
        keys = {str(path): classes[label] for path, label in train}
        split = split_groups(keys, {"val": settings.val_frac}, settings.seed)
        val = [s for s in train if split[str(s[0])] == "val"]
        train = [s for s in train if split[str(s[0])] == "train"]
    if not val:
        raise DataError(f"No validation images in {root}; add ROOT/val or raise --val-frac.")
    return TrainData(classes, train, val)


def _resumed_settings(settings: TrainSettings) -> tuple[TrainSettings, dict[str, Any]]:
    """The saved run's settings, with the machine settings given to this call, and last.pt."""
    assert settings.resume is not None
    last = load_checkpoint(settings.resume / "last.pt")
    given = settings.model_fields_set & set(MACHINE_SETTINGS)
    saved = last["settings"] | {k: getattr(settings, k) for k in given}
    return TrainSettings.model_validate(saved | {"resume": settings.resume}), last


def _loss_fn(settings: TrainSettings, data: TrainData) -> nn.Module:
    weight = None
    if settings.class_weights:
        counts = torch.bincount(torch.tensor([label for _, label in data.train]),
                                minlength=len(data.classes)).double()
        weight = (counts.sum() / (len(counts) * counts)).float()
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=settings.label_smoothing)


def _scheduler(settings: TrainSettings, optimizer: torch.optim.Optimizer, steps: int):
    """timm schedule stepped per update (cosine, warm-up) or per epoch (step, exp)."""
    if settings.sched == "none":
        return None
    kwargs: dict[str, Any] = {"warmup_epochs": settings.warmup_epochs, "warmup_lr": 1e-6,
                              "min_lr": settings.lr * 1e-3}
    if settings.sched == "cosine":
        kwargs |= {"sched": "cosine", "step_on_epochs": False, "updates_per_epoch": steps}
    elif settings.sched == "step":
        kwargs |= {"sched": "step", "decay_rate": settings.lr_decay or 0.1,
                   "decay_epochs": settings.decay_epochs or max(1, settings.epochs // 3)}
    else:  # exp: lr *= lr_decay after every epoch (the seed project's MultiplicativeLR)
        kwargs |= {"sched": "step", "decay_rate": settings.lr_decay or 0.99, "decay_epochs": 1}
    scheduler, _ = create_scheduler_v2(optimizer, num_epochs=settings.epochs, **kwargs)
    return scheduler


def _freeze_backbone(model: nn.Module, frozen: bool) -> None:
    """Only the classifier learns while frozen; unfrozen, everything does."""
    head = {id(p) for p in model.get_classifier().parameters()}
    for param in model.parameters():
        param.requires_grad = not frozen or id(param) in head


def _set_train_mode(model: nn.Module, frozen: bool) -> None:
    """Train mode; a frozen backbone stays in eval mode so its BatchNorm statistics are kept."""
    model.train(not frozen)
    model.get_classifier().train()


@dataclass
class _Setup:
    """Everything the epoch loop needs, built once by `_setup`."""

    settings: TrainSettings
    device: torch.device
    data: TrainData
    model: nn.Module
    ema: ModelEmaV3 | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    generator: torch.Generator
    config: dict[str, Any]
    run_dir: Path


def _loaders(settings: TrainSettings, data: TrainData, config: dict[str, Any],
             generator: torch.Generator, reporter: Reporter, pin: bool):
    workers = default_workers() if settings.workers is None else settings.workers
    caches: list[Any] = [None, None]
    if settings.cache == "ram":
        short = math.ceil(config["input_size"][-1] / config["crop_pct"])
        caches = [cache_images([p for p, _ in samples], short, max(workers, 1), reporter)
                  for samples in (data.train, data.val)]
    train_set = ImageDataset(data.train, train_transform(config, settings.aug), caches[0])
    val_set = ImageDataset(data.val, eval_transform(config), caches[1])
    sampler = None
    if settings.sampler == "weighted":
        sampler = weighted_sampler([y for _, y in data.train], len(data.classes), generator)
    train_loader = build_loader(train_set, settings.batch_size, workers=workers,
                                generator=generator, shuffle=True, sampler=sampler,
                                drop_last=len(train_set) > settings.batch_size, pin_memory=pin)
    val_loader = build_loader(val_set, settings.batch_size, workers=workers, pin_memory=pin)
    return train_loader, val_loader


def _setup(settings: TrainSettings, last: dict[str, Any] | None, reporter: Reporter) -> _Setup:
    device = resolve_device(settings.device)
    seed_everything(settings.seed)
    data = load_train_data(settings)
    model = create_model(settings.arch, len(data.classes), drop_rate=settings.drop_rate,
                         pretrained=settings.pretrained and last is None,
                         weights=settings.weights if last is None else None)
    config = data_config(model, settings.img_size)
    model.to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    generator = torch.Generator()
    train_loader, val_loader = _loaders(settings, data, config, generator, reporter,
                                        pin=device.type == "cuda")
    optimizer = create_optimizer_v2(model, opt=settings.opt, lr=settings.lr,
                                    weight_decay=settings.weight_decay,
                                    **({"layer_decay": settings.layer_decay}
                                       if settings.layer_decay else {}))
    scheduler = _scheduler(settings, optimizer, len(train_loader))
    ema = ModelEmaV3(model, decay=settings.ema_decay, use_warmup=True) if settings.ema else None
    fp16 = settings.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    run_dir = settings.resume or new_run_dir(settings.project, settings.name)
    setup = _Setup(settings, device, data, model, ema, optimizer, scheduler, scaler,
                   _loss_fn(settings, data).to(device), train_loader, val_loader, generator,
                   config, run_dir)
    if last is not None:
        model.load_state_dict(last["model"])
        optimizer.load_state_dict(last["optimizer"])
        scaler.load_state_dict(last["scaler"])
        if ema is not None:
            ema.load_state_dict(last["ema"])
        if scheduler is not None:
            scheduler.load_state_dict(last["scheduler"])
    return setup


def _train_one_epoch(s: _Setup, epoch: int, updates: int, reporter: Reporter,
                     skipped: set[int]) -> tuple[dict[str, float], int]:
    """One pass over the training data; returns its metrics and the new update count."""
    frozen = s.settings.freeze_backbone or epoch < s.settings.freeze_epochs
    _freeze_backbone(s.model, frozen)
    _set_train_mode(s.model, frozen)
    loss_sum, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    total = len(s.train_loader.sampler) if s.train_loader.sampler else len(s.data.train)
    with reporter.bar(f"epoch {epoch + 1}/{s.settings.epochs}", total) as bar:
        for images, labels, _, bad in s.train_loader:
            skipped.update(bad)
            if not len(labels):
                continue
            images, labels = to_device(images, s.device, s.settings.channels_last), labels.to(
                s.device, non_blocking=True)
            with autocast(s.device, s.settings.amp):
                logits = s.model(images)
                loss = s.loss_fn(logits.float(), labels)
            s.optimizer.zero_grad(set_to_none=True)
            s.scaler.scale(loss).backward()
            s.scaler.step(s.optimizer)
            s.scaler.update()
            updates += 1
            if s.scheduler is not None:
                s.scheduler.step_update(updates)
            if s.ema is not None:
                s.ema.update(s.model, step=updates)
            loss_sum += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            bar.advance(len(labels) + len(bad), loss=loss_sum / seen, acc=correct / seen,
                        img_s=seen / bar.elapsed)
    seconds = time.perf_counter() - start
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
            "images_per_s": seen / seconds, "seconds": seconds}, updates


def _validate(s: _Setup) -> tuple[dict[str, float], torch.Tensor]:
    model = s.ema.module if s.ema is not None else s.model
    n = len(s.data.classes)
    cm = torch.zeros(n, n, dtype=torch.long)
    loss_sum, seen = 0.0, 0
    plain_loss = nn.CrossEntropyLoss(reduction="sum")
    for logits, labels, _, _ in iterate_logits(model, s.val_loader, s.device,
                                               amp=s.settings.amp,
                                               channels_last=s.settings.channels_last):
        if not len(labels):
            continue
        loss_sum += float(plain_loss(logits, labels))
        seen += len(labels)
        cm += confusion_matrix(labels, logits.argmax(1), n)
    report = classification_report(cm, s.data.classes)
    return {"val_loss": loss_sum / max(seen, 1), "val_acc": report["accuracy"],
            "val_balanced_acc": report["balanced_accuracy"],
            "val_macro_f1": report["macro_f1"]}, cm


def _improved(settings: TrainSettings, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if settings.monitor == "val_loss" else value > best


def _checkpoint(s: _Setup, epoch: int, row: dict[str, Any]) -> dict[str, Any]:
    """The self-contained part of a checkpoint: enough to evaluate, predict and export."""
    model = s.ema.module if s.ema is not None else s.model
    return {
        "arch": resolve_arch(s.settings.arch),
        "classes": s.data.classes,
        "data_config": s.config,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metrics": row,
        "epoch": epoch,
        "settings": json.loads(s.settings.model_dump_json()),
        "wastecls_version": __version__,
    }


def _resume_state(s: _Setup, epoch: int, row: dict[str, Any], state: dict[str, Any]) -> dict:
    """last.pt: the checkpoint plus what it takes to continue training exactly."""
    return _checkpoint(s, epoch, row) | {
        "model": {k: v.detach().cpu() for k, v in s.model.state_dict().items()},
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict() if s.scheduler is not None else {},
        "ema": s.ema.state_dict() if s.ema is not None else {},
        "scaler": s.scaler.state_dict(),
        "train_state": state,
    }


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, so metrics.csv and last.pt always agree."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _record_epoch(s: _Setup, row: dict[str, Any], cm: torch.Tensor, state: dict[str, Any],
                  log: MetricsLog, trackers: list[Tracker], reporter: Reporter) -> None:
    """Log the epoch, keep best.pt (and its confusion matrix) if it improved, write last.pt."""
    run, epoch = s.run_dir, row["epoch"]
    log.append(row)
    reporter.info(_format_row(row))
    if _improved(s.settings, row[s.settings.monitor], state["best"]):
        state |= {"best": row[s.settings.monitor], "best_epoch": epoch, "bad_epochs": 0}
        save_checkpoint(run / "best.pt", _checkpoint(s, epoch, row))
        plot_confusion_matrix(cm.numpy(), s.data.classes, run / "confusion_matrix.png",
                              f"validation, epoch {epoch}")
        write_json(run / "val_report.json", {"epoch": epoch, "confusion_matrix": cm.tolist(),
                                             **classification_report(cm, s.data.classes)})
    else:
        state["bad_epochs"] += 1
    state["epoch"] = epoch
    save_checkpoint(run / "last.pt", _resume_state(s, epoch, row, state))
    plot_curves(log.rows, run / "curves.png")
    for tracker in trackers:
        tracker.log_epoch(row)


def _format_row(row: dict[str, Any]) -> str:
    return (f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f} acc "
            f"{row['train_acc']:.3f}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} "
            f"bal {row['val_balanced_acc']:.3f} f1 {row['val_macro_f1']:.3f}  "
            f"lr {row['lr']:.2e}  {row['images_per_s']:.1f} img/s  {row['seconds']:.0f}s")


def train(settings: TrainSettings, reporter: Reporter | None = None) -> TrainResult:
    """Train a classifier; write the run folder; return the best epoch's metrics."""
    last = None
    if settings.resume is not None:
        settings, last = _resumed_settings(settings)
    reporter = reporter or Reporter(settings.quiet)
    trackers: list[Tracker] = []
    if settings.neptune:
        trackers.append(NeptuneTracker(json.loads(settings.model_dump_json()),
                                       settings.neptune_mode, settings.neptune_project,
                                       settings.name))
    s = _setup(settings, last, reporter)
    run = s.run_dir
    write_config(settings, run / "config.yaml")
    state = dict(last["train_state"]) if last else {
        "epoch": 0, "updates": 0, "best": None, "best_epoch": 0, "bad_epochs": 0, "skipped": []}
    log = MetricsLog.resume(run / "metrics.csv", state["epoch"]) if last else MetricsLog(
        run / "metrics.csv")
    if last is None:
        save_checkpoint(run / "last.pt", _resume_state(s, 0, {}, state))
    reporter.info(f"training {settings.arch} on {len(s.data.train)} images "
                  f"({len(s.data.val)} val, {len(s.data.classes)} classes) on {s.device}; "
                  f"run folder {run}")
    skipped = {i for i, (p, _) in enumerate(s.data.train) if str(p) in state["skipped"]}
    start_time, stopped_early = time.perf_counter(), False
    epoch = state["epoch"]
    try:
        for epoch in range(state["epoch"], settings.epochs):
            seed_everything(settings.seed * 1_000_003 + epoch)
            s.generator.manual_seed(settings.seed * 1_000_003 + epoch)
            known = set(skipped)
            row_train, state["updates"] = _train_one_epoch(s, epoch, state["updates"],
                                                           reporter, skipped)
            for index in sorted(skipped - known):
                reporter.warn(f"skipped unreadable training image {s.data.train[index][0]}")
            state["skipped"] = sorted(str(s.data.train[i][0]) for i in skipped)
            # The rate the epoch ended with (the head's, when --layer-decay scales the others).
            lr = max(group["lr"] for group in s.optimizer.param_groups)
            row_val, cm = _validate(s)
            if s.scheduler is not None:
                s.scheduler.step(epoch + 1)
            row = {"epoch": epoch + 1, **row_train, **row_val, "lr": lr}
            with _deferred_interrupt():
                _record_epoch(s, {k: row[k] for k in METRIC_COLUMNS}, cm, state, log,
                              trackers, reporter)
            if settings.patience and state["bad_epochs"] >= settings.patience:
                reporter.info(f"early stop: no {settings.monitor} improvement for "
                              f"{settings.patience} epochs")
                stopped_early = True
                break
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"Interrupted during epoch {epoch + 1}. {run / 'last.pt'} holds epoch "
            f"{state['epoch']}; continue with: wastecls train --resume {run}"
        ) from None
    best_row = next(r for r in log.rows if int(r["epoch"]) == state["best_epoch"])
    result = TrainResult(run, state["best_epoch"], best_row, state["epoch"], stopped_early,
                         state["skipped"], time.perf_counter() - start_time)
    summary = {"best_epoch": result.best_epoch, "monitor": settings.monitor,
               "best": result.best, "epochs_run": result.epochs_run,
               "stopped_early": stopped_early, "skipped_images": result.skipped_images,
               "seconds": result.seconds, "classes": s.data.classes,
               "train_images": len(s.data.train), "val_images": len(s.data.val),
               "device": str(s.device), "data_config": s.config}
    write_json(run / "summary.json", summary)
    for tracker in trackers:
        tracker.finish(summary, {"confusion_matrix": run / "confusion_matrix.png",
                                 "curves": run / "curves.png",
                                 "classification_report": run / "val_report.json"})
    return result
