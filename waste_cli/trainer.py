"""`wastecls train`: fine-tune a timm model, keep the best checkpoint, survive interruption.

Resolve, then build: `recipe.resolve_run` makes every choice of the run, `Trainer` wires the
plan's objects together (data, model, optimiser, run folder) and `fit()` runs the epoch loop:
train one epoch, validate, keep the best, record (metrics.csv, best.pt, last.pt), maybe stop.
The step itself is written out in `train_one_epoch`. Each epoch's randomness (shuffling,
augmentation, dropout) is derived from (seed, epoch) alone, so a run resumed from last.pt at
epoch k replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, RandomSampler

from waste_cli import __version__
from waste_cli.calibrate import FitOptions, calibrate_checkpoint
from waste_cli.checkpoint import (
    Checkpoint,
    ResumeCheckpoint,
    TrainState,
    load_checkpoint,
    save_checkpoint,
)
from waste_cli.console import Reporter
from waste_cli.data.loading import (
    ImageDataset,
    build_loader,
    cache_images,
    inverse_frequency,
    weighted_sampler,
)
from waste_cli.data.scan import (
    PSEUDO_SPLIT,
    SPLITS,
    crop_settings,
    dataset_classes,
    labeled_samples,
    list_images,
)
from waste_cli.data.split import split_groups
from waste_cli.data.transforms import BatchFinish, data_config, eval_transform, train_transform
from waste_cli.distributed import (
    Distributed,
    all_gather_union,
    all_reduce_sum,
    init_distributed,
    newest_run,
    shard,
)
from waste_cli.errors import ConfigError, DataError, WasteclsError
from waste_cli.familiarity import FittedCalibration
from waste_cli.fileio import check_no_overlap, ensure_writable
from waste_cli.metrics import classification_report, confusion_matrix
from waste_cli.models import FeatureClassifier, create_model, freeze_layers, resolve_arch
from waste_cli.plots import plot_confusion_matrix, plot_curves
from waste_cli.processes import interrupts_held
from waste_cli.pseudo import (
    PerBatchPseudo,
    PerEpochPseudo,
    PseudoContext,
    PseudoStrategy,
    TeacherCalibration,
    load_pool,
    read_manifests,
)
from waste_cli.recipe import RunPlan, resolve_run, resumed_options
from waste_cli.runtime import (
    amp_dtype,
    autocast,
    keep_freed_memory,
    memory_format,
    resolve_device,
    seed_everything,
    to_device,
)
from waste_cli.settings import TrainOptions, write_config
from waste_cli.tracking import MetricsLog, NeptuneTracker, Tracker, new_run_dir, write_json

__all__ = ["TrainData", "TrainResult", "Trainer", "TrainingDiverged", "TrainingInterrupted",
           "build_trainer", "load_train_data", "train"]

METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc",
                  "val_macro_f1", "lr", "images_per_s", "seconds", "data_seconds")

Samples = list[tuple[Path, int]]


class TrainingDiverged(WasteclsError):
    """The loss stopped being a finite number: last.pt holds the last good epoch."""


class TrainingInterrupted(WasteclsError):
    """Ctrl-C: last.pt holds the last finished epoch."""

    exit_code = 130


@dataclass
class TrainData:
    classes: list[str]
    train: Samples
    val: Samples


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


def _refuse_held_out(extra: list[tuple[Path, int]], root: Path) -> None:
    """--extra-labels may not bring validation or test images into training."""
    held_out = [(root / split).resolve() for split in ("val", "test")]
    leaked = [path for path, _ in extra
              if any(path.resolve().is_relative_to(folder) for folder in held_out)]
    if leaked:
        raise DataError(f"--extra-labels lists {len(leaked)} image(s) of {root}'s val or test "
                        f"split (e.g. {leaked[0]}): training on them would make those numbers "
                        "meaningless. Label images from elsewhere, e.g. ROOT/pseudolabel.")


def load_train_data(settings: TrainOptions, reporter: Reporter) -> TrainData:
    """Training and validation samples; val is ROOT/val or a seeded share of train."""
    root = settings.data
    if root is None or not (root / "train").is_dir():
        raise DataError(
            f"{root} has no train/ folder. Point --data at a folder made by `wastecls prepare` "
            "(ROOT/train/<class>/, ROOT/val/<class>/)."
        )
    classes = dataset_classes(root)
    if len(classes) < 2:
        raise DataError(f"{root} has {len(classes)} class ({', '.join(classes)}): a classifier "
                        "needs at least two. Add class folders, or prepare the data again.")
    train = labeled_samples(root / "train", classes)
    extra = read_manifests(settings.extra_labels, classes, reporter)
    _refuse_held_out(extra, root)
    train += extra
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


def _resume(options: TrainOptions) -> tuple[TrainOptions, ResumeCheckpoint]:
    """The options of the run --resume continues (see `recipe.resumed_options`), and last.pt."""
    assert options.resume is not None  # the caller checked
    last: ResumeCheckpoint = load_checkpoint(options.resume / "last.pt")  # type: ignore[assignment]
    if "train_state" not in last:
        raise ConfigError(f"{options.resume / 'last.pt'} holds no training state; --resume "
                          "takes a run folder written by `wastecls train`.")
    merged = resumed_options(options, last, options.resume)
    if merged.epochs != last["settings"]["epochs"]:  # re-plan the schedule for the new length
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


def _epoch_seed(settings: TrainOptions, epoch: int) -> int:
    """Where all of an epoch's randomness starts, so that a resumed run replays it."""
    return settings.seed * 1_000_003 + epoch


def improved(monitor: str, row: dict[str, Any], state: TrainState) -> bool:
    """Whether this epoch beats the best so far on `monitor`.

    Accuracy and macro-F1 move in steps of one validation image, so on a small val split ties
    are common; a tie goes to the epoch with the lower validation loss, the finer measure.
    """
    value, best = row[monitor], state["best"]
    if best is None:
        return True
    if monitor == "val_loss":
        return value < best
    tie_won = value == best and row["val_loss"] < state.get("best_val_loss", math.inf)
    return value > best or tie_won


def _format_row(row: dict[str, Any]) -> str:
    return (f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f} acc "
            f"{row['train_acc']:.3f}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} "
            f"bal {row['val_balanced_acc']:.3f} f1 {row['val_macro_f1']:.3f}  "
            f"lr {row['lr']:.2e}  {row['images_per_s']:.1f} img/s  {row['seconds']:.0f}s")


class Trainer:
    """One training run: wired once from its plan and data, then `fit()`.

    `model` is the plain timm model (checkpoints, EMA, freezing, evaluation); `forward_model`
    is what the step calls: `model` itself, or its DistributedDataParallel wrapper under
    torchrun. Every rank builds the same trainer; only rank 0 prints and writes files.
    """

    def __init__(self, plan: RunPlan, data: TrainData, reporter: Reporter, dist: Distributed,
                 device: torch.device) -> None:
        settings, last = plan.options, plan.last
        self.settings, self.data, self.plan = settings, data, plan
        self.reporter, self.dist, self.device = reporter, dist, device
        self._build_model(pretrained=last is None)
        self.generator = torch.Generator()
        self.workers = plan.workers
        self.train_cache = self._cache([p for p, _ in self.data.train])
        self._build_loaders()
        self._build_optimization()
        self.finish = BatchFinish(self.data_config, settings.aug)
        self.teacher: TeacherCalibration | None = None  # pseudo-labels: the latest validation's
        self.pseudo = self._pseudo_strategy()
        self.run_dir = self._run_dir()
        self.state: TrainState = dict(last["train_state"]) if last else {  # type: ignore[assignment]
            "epoch": 0, "updates": 0, "best": None, "best_epoch": 0, "bad_epochs": 0,
            "skipped": []}
        if last is not None:
            self._restore(last)
        self.forward_model: nn.Module = self.model
        if dist.active:  # DDP needs the trainable set fixed before wrapping
            self.set_trainable(settings.freeze_backbone)
            self.forward_model = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)

    # --- setup -------------------------------------------------------------------------------

    def _build_model(self, pretrained: bool) -> None:
        settings = self.settings
        model = create_model(settings.arch, len(self.data.classes), drop_rate=settings.drop_rate,
                             pretrained=settings.pretrained and pretrained,
                             weights=settings.weights if pretrained else None,
                             classes=self.data.classes)
        self.data_config = data_config(model, settings.img_size)
        # Before the optimizer is built, so that frozen layers are not even in it.
        self.frozen_layers = (freeze_layers(model, settings.freeze_layers)
                              if settings.freeze_layers else [])
        self.frozen_params = frozenset(id(p) for p in model.parameters() if not p.requires_grad)
        model.to(self.device, memory_format=memory_format(settings.channels_last))
        self.model = model

    def _cache(self, paths: list[Path]) -> list[Any] | None:
        """With --cache ram, every image decoded once at the size the crops are cut from."""
        if self.settings.cache != "ram":
            return None
        short = math.ceil(self.data_config["input_size"][-1] / self.data_config["crop_pct"])
        return cache_images(paths, short, os.cpu_count() or 1, self.reporter)  # threads: no fork

    def labelled_sampler(self) -> torch.utils.data.Sampler[int] | None:
        """--sampler weighted's order over the labelled images (None: plain shuffling)."""
        if self.settings.sampler != "weighted":
            return None
        return weighted_sampler([y for _, y in self.data.train], len(self.data.classes),
                                self.generator)

    def _build_loaders(self) -> None:
        settings, dist = self.settings, self.dist
        pin = self.device.type == "cuda"
        train_set = ImageDataset(self.data.train, train_transform(self.data_config, settings.aug),
                                 self.train_cache)
        order = self.labelled_sampler() or (
            RandomSampler(train_set, generator=self.generator) if dist.active else None)
        self.train_loader = build_loader(
            train_set, settings.batch_size, workers=self.workers, generator=self.generator,
            shuffle=True, sampler=shard(order, dist),
            drop_last=len(train_set) > settings.batch_size, pin_memory=pin)
        val_set = ImageDataset(self.data.val, eval_transform(self.data_config),
                               self._cache([p for p, _ in self.data.val]))
        self.val_loader = build_loader(
            val_set, settings.batch_size, workers=self.workers, pin_memory=pin,
            sampler=shard(range(len(val_set)), dist, even=False) if dist.active else None)

    def _build_optimization(self) -> None:
        settings = self.settings
        layer_decay = {"layer_decay": settings.layer_decay} if settings.layer_decay else {}
        self.optimizer = create_optimizer_v2(self.model, opt=settings.opt, lr=settings.lr,
                                             weight_decay=settings.weight_decay, **layer_decay)
        self.scheduler = self._scheduler(len(self.train_loader))
        self.ema = (ModelEmaV3(self.model, decay=settings.ema_decay, use_warmup=True)
                    if settings.ema else None)
        fp16 = bool(settings.amp) and amp_dtype(self.device) == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        weight = (inverse_frequency([y for _, y in self.data.train], len(self.data.classes))
                  .float() if settings.class_weights else None)
        self.loss_fn = nn.CrossEntropyLoss(weight=weight,
                                           label_smoothing=settings.label_smoothing)
        self.loss_fn.to(self.device)

    def _scheduler(self, steps: int) -> Any:
        """The plan's timm schedule over `steps` updates per epoch (None: a constant rate)."""
        if self.plan.schedule is None:
            return None
        scheduler, _ = create_scheduler_v2(self.optimizer, updates_per_epoch=steps,
                                           **self.plan.schedule)
        return scheduler

    def _pseudo_strategy(self) -> PseudoStrategy | None:
        settings = self.settings
        if settings.pseudolabel == "none":
            return None
        assert settings.data is not None  # TrainOptions requires it without --resume
        test = settings.data / "test"
        pool = load_pool(settings.pseudo_data or settings.data / PSEUDO_SPLIT,
                         [p for p, _ in self.data.val]
                         + (list_images(test) if test.is_dir() else []))
        context = PseudoContext(settings, self.data.classes, self.data.train, self.data_config,
                                self.generator, self.workers, self.dist, self.device,
                                self.reporter, self.labelled_sampler, self.teacher_calibration)
        if settings.pseudolabel == "per-batch":
            return PerBatchPseudo(context, pool, self.model)
        pool_cache = self._cache(pool.paths)
        return PerEpochPseudo(context, pool, self.train_cache, pool_cache,
                              teacher=lambda: self.eval_model)

    def _run_dir(self) -> Path:
        """The run folder: the resumed one, or a new one chosen by rank 0."""
        settings = self.settings
        run_dir = settings.resume or (new_run_dir(settings.project, settings.name)
                                      if self.dist.main else None)
        if self.dist.active:
            shared = [run_dir]
            torch.distributed.broadcast_object_list(shared, src=0)
            run_dir = shared[0]
        assert run_dir is not None  # rank 0 always chose one
        return run_dir

    def _restore(self, last: ResumeCheckpoint) -> None:
        self.model.load_state_dict(last["model"])
        self.optimizer.load_state_dict(last["optimizer"])
        self.scaler.load_state_dict(last["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(last["ema"])
        if self.scheduler is not None and "scheduler" in last:
            self.scheduler.load_state_dict(last["scheduler"])

    # --- one epoch ---------------------------------------------------------------------------

    def set_trainable(self, head_only: bool) -> None:
        """Only the classifier learns while `head_only`; otherwise all but the frozen layers."""
        head = {id(p) for p in self.model.get_classifier().parameters()}
        for param in self.model.parameters():
            param.requires_grad = (id(param) in head if head_only
                                   else id(param) not in self.frozen_params)

    def _set_train_mode(self, head_only: bool) -> None:
        """Train mode, except for what does not learn: a frozen backbone and --freeze-layers
        stay in eval mode so their BatchNorm statistics are kept."""
        self.model.train(not head_only)
        for module in self.frozen_layers:
            module.eval()
        self.model.get_classifier().train()

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and saved: the EMA's when --ema."""
        return self.ema.module if self.ema is not None else self.model

    def train_one_epoch(self, epoch: int, loader: DataLoader
                        ) -> tuple[dict[str, float], set[int]]:
        """One pass over `loader`: the metrics, and the indices of the training images that
        could not be read."""
        settings = self.settings
        head_only = settings.freeze_backbone or epoch < settings.freeze_epochs
        if not self.dist.active:  # under DDP the trainable set is fixed before wrapping
            self.set_trainable(head_only)
        self._set_train_mode(head_only)
        loss_sum, correct, seen, waited = 0.0, 0, 0, 0.0
        unreadable: set[int] = set()
        # Batch-level augmentation draws from its own generator, seeded like the epoch's others.
        lighting = torch.Generator().manual_seed(_epoch_seed(settings, epoch) * 1_000
                                                 + self.dist.rank)
        start = time.perf_counter()
        planned, steps = len(self.train_loader), len(loader)
        with self.reporter.bar(f"epoch {epoch + 1}/{settings.epochs}",
                               len(loader.sampler)) as bar:
            batches = iter(loader)
            for step in range(steps):
                ready = time.perf_counter()
                batch = next(batches, None)
                if batch is None:
                    break
                waited += time.perf_counter() - ready  # timm's "data time": is loading the limit?
                images, labels, indices, bad = batch
                unreadable.update(i for i in bad if i < len(self.data.train))
                if not len(labels):
                    continue
                images = self.finish(to_device(images, self.device, settings.channels_last),
                                     lighting)
                labels = labels.to(self.device, non_blocking=True)
                # The step: forward (with pseudo-labels weighted in), backward, update, EMA.
                with autocast(self.device, settings.amp):
                    loss, logits, labelled = self._loss(images, labels, indices)
                value = float(loss.detach())
                if not math.isfinite(value):  # before the step: the weights stay finite
                    raise TrainingDiverged(
                        f"The training loss became {value} in epoch {epoch + 1}, step "
                        f"{step + 1}: the run diverged (--lr {settings.lr} too high?). "
                        f"{self.run_dir / 'last.pt'} holds the last finished epoch; start "
                        "again with a lower --lr.")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.state["updates"] += 1
                if self.scheduler is not None:  # progress in planned steps: epochs may grow
                    self.scheduler.step_update(epoch * planned + (step + 1) * planned // steps)
                if self.ema is not None:
                    self.ema.update(self.model, step=self.state["updates"])
                loss_sum += value * len(labels)
                correct += int((logits.argmax(1) == labels)[labelled].sum())
                seen += int(labelled.sum())
                bar.advance(len(labels) + len(bad), loss=loss_sum / max(seen, 1),
                            acc=correct / max(seen, 1), img_s=seen / bar.elapsed)
        seconds = time.perf_counter() - start
        loss_sum, correct, seen = (float(t) for t in all_reduce_sum(loss_sum, correct, seen))
        return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                "images_per_s": seen / seconds, "seconds": seconds,
                "data_seconds": waited}, unreadable

    def _loss(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, logits, mask of the labelled rows) for one batch."""
        if self.pseudo is not None and self.pseudo.active:
            return self.pseudo.loss(self.forward_model, images, labels, indices, self.loss_fn)
        logits = self.forward_model(images)
        return (self.loss_fn(logits.float(), labels), logits,
                torch.ones_like(labels, dtype=torch.bool))

    @torch.inference_mode()
    def validate(self) -> tuple[dict[str, float], torch.Tensor]:
        """Validation metrics of `eval_model` over the whole val split, and its confusion. With
        pseudo-labels, the pass also fits the model's `TeacherCalibration`."""
        model = self.eval_model
        model.eval()
        scored = FeatureClassifier(model)
        n = len(self.data.classes)
        cm = torch.zeros(n, n, dtype=torch.long)
        loss_sum, seen = 0.0, 0
        plain_loss = nn.CrossEntropyLoss(reduction="sum")
        kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for images, labels, _, _ in self.val_loader:
            if not len(labels):
                continue
            with autocast(self.device, self.settings.amp):
                logits, features = scored(to_device(images, self.device,
                                                    self.settings.channels_last))
            logits = logits.float().cpu()
            loss_sum += float(plain_loss(logits, labels))
            seen += len(labels)
            cm += confusion_matrix(labels, logits.argmax(1), n)
            if self.pseudo is not None:
                kept.append((logits, labels, features.float().cpu()))
        total, loss_sum, seen = all_reduce_sum(cm, loss_sum, seen)  # the whole validation set
        cm, loss_sum, seen = total.long(), float(loss_sum), float(seen)
        if self.pseudo is not None and kept:
            self.teacher = self._fit_teacher(kept)
        report = classification_report(cm, self.data.classes)
        return {"val_loss": loss_sum / max(seen, 1), "val_acc": report["accuracy"],
                "val_balanced_acc": report["balanced_accuracy"],
                "val_macro_f1": report["macro_f1"]}, cm

    def _fit_teacher(self, kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
                     ) -> TeacherCalibration:
        """The calibration of this validation pass, from every rank's share (so that all
        ranks accept the same pseudo-labels)."""
        parts = [torch.cat(column) for column in zip(*kept, strict=True)]
        if self.dist.active:
            shares: list[Any] = [None] * self.dist.world
            torch.distributed.all_gather_object(shares, parts)
            parts = [torch.cat(column) for column in zip(*shares, strict=True)]
        logits, labels, features = (part.numpy() for part in parts)
        return TeacherCalibration.fit(logits, labels, features, self.settings.familiar_share)

    def teacher_calibration(self) -> TeacherCalibration:
        """The latest validation's calibration; before the first one, a validation pass."""
        if self.teacher is None:
            self.validate()
        assert self.teacher is not None  # validate() fitted it
        return self.teacher

    # --- checkpoints and records -------------------------------------------------------------

    def checkpoint(self, epoch: int, row: dict[str, Any]) -> Checkpoint:
        """best.pt: the self-contained part, enough to evaluate, predict and export."""
        return {
            "arch": resolve_arch(self.settings.arch),
            "classes": self.data.classes,
            "data_config": self.data_config,
            "crop": crop_settings(self.settings.data) if self.settings.data else {},
            "model": {k: v.detach().cpu() for k, v in self.eval_model.state_dict().items()},
            "metrics": row,
            "epoch": epoch,
            "settings": json.loads(self.settings.model_dump_json()),
            "wastecls_version": __version__,
        }

    def resume_checkpoint(self, epoch: int, row: dict[str, Any]) -> ResumeCheckpoint:
        """last.pt: the checkpoint plus what it takes to continue training exactly."""
        return self.checkpoint(epoch, row) | {  # type: ignore[return-value]
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "scaler": self.scaler.state_dict(),
            "train_state": self.state,
        }

    def save(self, row: dict[str, Any], cm: torch.Tensor, best: bool, log: MetricsLog,
             trackers: list[Tracker]) -> None:
        """Write the epoch's files: best.pt (with its confusion matrix) when `best`, last.pt,
        the curves and the trackers' records. Only rank 0 writes."""
        if not self.dist.main:
            return
        run, epoch = self.run_dir, row["epoch"]
        if best:
            save_checkpoint(run / "best.pt", dict(self.checkpoint(epoch, row)))
            plot_confusion_matrix(cm.numpy(), self.data.classes, run / "confusion_matrix.png",
                                  f"validation, epoch {epoch}")
            write_json(run / "val_report.json", {"epoch": epoch, "confusion_matrix":
                       cm.tolist(), **classification_report(cm, self.data.classes)})
        save_checkpoint(run / "last.pt", dict(self.resume_checkpoint(epoch, row)))
        plot_curves(log.rows, run / "curves.png")
        for tracker in trackers:
            tracker.log_epoch(row)

    def record(self, row: dict[str, Any]) -> bool:
        """Count the epoch into the state: whether it is the best so far, and early stopping's
        epochs without improvement. Every rank does this the same way (metrics are reduced)."""
        state, best = self.state, improved(self.settings.monitor, row, self.state)
        if best:
            state.update(best=row[self.settings.monitor], best_val_loss=row["val_loss"],
                         best_epoch=row["epoch"], bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = row["epoch"]
        return best

    # --- the loop ----------------------------------------------------------------------------

    def fit(self, log: MetricsLog, trackers: list[Tracker]) -> bool:
        """The epoch loop from where the state stands; returns whether it stopped early."""
        settings, state = self.settings, self.state
        known_bad = {i for i, (p, _) in enumerate(self.data.train)  # indices; the state: paths
                     if str(p) in state["skipped"]}
        for epoch in range(state["epoch"], settings.epochs):
            seed = _epoch_seed(settings, epoch)
            seed_everything(seed)
            self.generator.manual_seed(seed)
            loader = self.train_loader
            if self.pseudo is not None:
                loader = self.pseudo.begin_epoch(epoch) or loader
            row_train, unreadable = self.train_one_epoch(epoch, loader)
            unreadable = all_gather_union(self.dist, unreadable)
            for index in sorted(unreadable - known_bad):
                self.reporter.warn(f"skipped unreadable training image {self.data.train[index][0]}")
            known_bad |= unreadable
            state["skipped"] = sorted(str(self.data.train[i][0]) for i in known_bad)
            # The rate the epoch ended with (the head's, when --layer-decay scales the others).
            lr = max(group["lr"] for group in self.optimizer.param_groups)
            if self.dist.active:  # every rank validates rank 0's weights and BatchNorm statistics
                for tensor in self.eval_model.state_dict().values():
                    torch.distributed.broadcast(tensor, src=0)
            row_val, cm = self.validate()
            if self.scheduler is not None:
                self.scheduler.step(epoch + 1)
            row = {"epoch": epoch + 1, **row_train, **row_val, "lr": lr}
            row = {k: row[k] for k in METRIC_COLUMNS}
            if self.pseudo is not None:
                row |= self.pseudo.columns()
            best = self.record(row)
            log.append(row)
            self.reporter.info(_format_row(row))
            with interrupts_held():
                self.save(row, cm, best, log, trackers)
            if settings.patience and state["bad_epochs"] >= settings.patience:
                self.reporter.info(f"early stop: no {settings.monitor} improvement for "
                                   f"{settings.patience} epochs")
                return True
        return False


def _check_outputs(settings: TrainOptions) -> None:
    """Before any work: the run folder may be written, and overlaps no input."""
    runs = settings.resume or settings.project
    data = settings.data
    check_no_overlap(
        [("run folder", settings.resume or settings.project / settings.name)],
        [*((f"{split} images", data / split) for split in (*SPLITS, PSEUDO_SPLIT)
           if data is not None),
         ("--pseudo-data", settings.pseudo_data), ("--weights", settings.weights),
         *(("--extra-labels", path) for path in settings.extra_labels)])
    ensure_writable(runs, "run folder")


def _calibrate_best(trainer: Trainer) -> FittedCalibration:
    """Fit best.pt's temperature and unfamiliarity threshold on the run's own train and val
    images, and write them into it (the run wrote best.pt: rewriting it loses nothing)."""
    best = trainer.run_dir / "best.pt"
    settings = trainer.settings
    options = FitOptions(settings.familiar_share, settings.min_confidence)
    return calibrate_checkpoint(best, best, trainer.data.train, trainer.data.val, options,
                                trainer.device, trainer.reporter)


def _summary(trainer: Trainer, result: TrainResult) -> dict[str, Any]:
    calibration = result.calibration
    return {"best_epoch": result.best_epoch, "monitor": trainer.settings.monitor,
            "best": result.best, "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early, "skipped_images": result.skipped_images,
            "seconds": result.seconds, "classes": trainer.data.classes,
            "train_images": len(trainer.data.train), "val_images": len(trainer.data.val),
            "device": str(trainer.device), "processes": trainer.dist.world,
            "data_config": trainer.data_config,
            "calibration": calibration.calibration.model_dump() | calibration.report
            if calibration is not None else None}


def build_trainer(options: TrainOptions, reporter: Reporter, dist: Distributed,
                  device: torch.device, last: ResumeCheckpoint | None = None) -> Trainer:
    """Read the data, resolve the run's plan (printing every `auto` choice once), and wire a
    Trainer from them."""
    if dist.active and options.freeze_epochs:
        raise ConfigError("--freeze-epochs is not supported with several processes (DDP "
                          "needs the same trainable parameters throughout); use "
                          "--freeze-backbone.")
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


def train(settings: TrainOptions, reporter: Reporter | None = None) -> TrainResult:
    """Train a classifier; write the run folder; return the best epoch's metrics.

    Under torchrun (WORLD_SIZE > 1) every process runs this; rank 0 alone prints and writes.
    """
    dist, device = init_distributed(resolve_device(settings.device))
    settings = _restarted(settings)
    last = None
    if settings.resume is not None:
        settings, last = _resume(settings)
    elif settings.data is not None:  # stored absolute: the run resumes from any folder
        settings = settings.model_copy(update={"data": settings.data.absolute()})
    reporter = reporter if reporter is not None and dist.main else Reporter(
        settings.quiet or not dist.main)
    trackers: list[Tracker] = []
    if settings.neptune and dist.main:
        trackers.append(NeptuneTracker(json.loads(settings.model_dump_json()),
                                       settings.neptune_mode, settings.neptune_project,
                                       settings.name))
    if dist.main:
        _check_outputs(settings)
    try:
        trainer = build_trainer(settings, reporter, dist, device, last)
        run = trainer.run_dir
        log = MetricsLog.resume(run / "metrics.csv", trainer.state["epoch"], write=dist.main)
        settings = trainer.settings  # every `auto` resolved
        if dist.main:
            write_config(settings, run / "config.yaml")
            if last is None:
                save_checkpoint(run / "last.pt", dict(trainer.resume_checkpoint(0, {})))
        reporter.info(f"training {settings.arch} on {len(trainer.data.train)} images "
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
