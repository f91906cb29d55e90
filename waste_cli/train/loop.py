"""`wastecls train`: fine-tune a timm model, keep the best checkpoint, survive interruption.

Resolve, then build: `recipe.resolve_run` makes every choice of the run, `Trainer` wires the
plan's objects together (data, model, optimiser, run folder) and `fit()` runs the epoch loop:
train one epoch, validate, keep the best, record (metrics.csv, best.pt, last.pt), maybe stop.
The step itself is written out in `train_one_epoch`. Each epoch's randomness (shuffling,
augmentation, dropout) is derived from (seed, epoch) alone, so a run resumed from last.pt at
epoch k replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
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
from waste_cli.core.console import Reporter
from waste_cli.core.errors import DataError, WasteclsError
from waste_cli.core.files import write_json
from waste_cli.core.metrics import classification_report, confusion_matrix
from waste_cli.core.plots import plot_confusion_matrix, plot_curves
from waste_cli.core.processes import interrupts_held
from waste_cli.core.runtime import (
    amp_dtype,
    autocast,
    memory_format,
    seed_everything,
    to_device,
)
from waste_cli.data.loading import (
    ImageDataset,
    build_loader,
    cache_images,
    inverse_frequency,
    weighted_sampler,
)
from waste_cli.data.scan import (
    PSEUDO_SPLIT,
    crop_settings,
    list_images,
)
from waste_cli.data.transforms import BatchFinish, data_config, eval_transform, train_transform
from waste_cli.model.checkpoint import (
    Checkpoint,
    ResumeCheckpoint,
    TrainState,
    load_checkpoint,
    save_checkpoint,
)
from waste_cli.model.factory import create_model, freeze_layers, resolve_arch
from waste_cli.model.heads import FeatureClassifier
from waste_cli.options import TrainOptions, options_record
from waste_cli.train.distributed import (
    Distributed,
    all_gather_union,
    all_reduce_sum,
    shard,
)
from waste_cli.train.inputs import TrainData
from waste_cli.train.recipe import RunPlan
from waste_cli.train.self_training import (
    PerBatchPseudo,
    PerEpochPseudo,
    PseudoContext,
    PseudoStrategy,
    ValidationOutputs,
    load_pool,
)
from waste_cli.train.tracking import MetricsLog, Tracker, new_run_dir

__all__ = ["METRIC_COLUMNS", "Trainer", "TrainingDiverged", "improved"]

METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc",
                  "val_macro_f1", "lr", "images_per_s", "seconds", "data_seconds")




@dataclass(frozen=True)
class Validation:
    """What one validation pass computed."""

    metrics: dict[str, float]  # val_loss, val_acc, val_balanced_acc, val_macro_f1
    confusion: torch.Tensor
    outputs: ValidationOutputs | None  # when asked for (pseudo-labels)


class TrainingDiverged(WasteclsError):
    """The loss stopped being a finite number: last.pt holds the last good epoch."""


def _epoch_seed(options: TrainOptions, epoch: int) -> int:
    """Where all of an epoch's randomness starts, so that a resumed run replays it."""
    return options.seed * 1_000_003 + epoch


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
        """Wire the plan's objects; every choice was made by `recipe.resolve_run`.

        The order is the dependencies': the model first (its data config sets the transforms,
        and frozen layers must be frozen before the optimizer collects parameters), then the
        loaders (their length sets the schedule), the optimization, the pseudo-label strategy
        (it labels with the EMA model), the run folder and the state (restored from last.pt),
        and last the DDP wrapper (it needs the trainable set fixed).
        """
        options, last = plan.options, plan.last
        self.options, self.data, self.plan = options, data, plan
        self.reporter, self.dist, self.device = reporter, dist, device
        self.workers = plan.workers
        self.generator = torch.Generator()  # reseeded every epoch: order and augmentation
        self.model, self.data_config, self.frozen_layers = self._build_model(last is None)
        self.frozen_params = frozenset(id(p) for p in self.model.parameters()
                                       if not p.requires_grad)
        self.train_cache = self._cache([p for p, _ in data.train])
        self.labelled_sampler = self._labelled_sampler()
        self.train_loader, self.val_loader = self._build_loaders()
        self.optimizer, self.scheduler, self.ema, self.scaler = self._build_optimization()
        self.loss_fn = self._build_loss()
        self.finish = BatchFinish(self.data_config, options.aug)
        self.pseudo = self._pseudo_strategy()
        self.run_dir = self._run_dir()
        self.state: TrainState = dict(last["train_state"]) if last else {  # type: ignore[assignment]
            "epoch": 0, "updates": 0, "best": None, "best_epoch": 0, "bad_epochs": 0,
            "skipped": []}
        # --wise-ft's other end: the weights before fine-tuning, taken when the head alone has
        # learned (the end of --freeze-epochs), or now.
        self.wise_anchor: dict[str, torch.Tensor] | None = None
        if last is not None:
            self._restore(last)
        elif options.wise_ft < 1 and not options.freeze_epochs:
            self.wise_anchor = self._weights(self.model, keep=True)
        self.forward_model = self._forward_model()

    # --- setup -------------------------------------------------------------------------------

    def _build_model(self, pretrained: bool) -> tuple[nn.Module, dict[str, Any], list[nn.Module]]:
        """(model on the device, its data config, its frozen layer groups)."""
        options = self.options
        model = create_model(options.arch, len(self.data.classes), drop_rate=options.drop_rate,
                             pretrained=options.pretrained and pretrained,
                             weights=options.weights if pretrained else None,
                             classes=self.data.classes)
        frozen = freeze_layers(model, options.freeze_layers) if options.freeze_layers else []
        model.to(self.device, memory_format=memory_format(options.channels_last))
        return model, data_config(model, options.img_size), frozen

    def _cache(self, paths: list[Path]) -> list[Any] | None:
        """With --cache ram, every image decoded once at the size the crops are cut from."""
        if self.options.cache != "ram":
            return None
        short = math.ceil(self.data_config["input_size"][-1] / self.data_config["crop_pct"])
        return cache_images(paths, short, os.cpu_count() or 1, self.reporter)  # threads: no fork

    def _labelled_sampler(self) -> torch.utils.data.Sampler[int] | None:
        """--sampler weighted's order over the labelled images (None: plain shuffling). It
        draws from the epoch's generator when iterated, so one object serves every epoch."""
        if self.options.sampler != "weighted":
            return None
        return weighted_sampler([y for _, y in self.data.train], len(self.data.classes),
                                self.generator)

    def _build_loaders(self) -> tuple[DataLoader, DataLoader]:
        """(training loader, validation loader): this rank's share under torchrun."""
        options, dist = self.options, self.dist
        pin = self.device.type == "cuda"
        train_set = ImageDataset(self.data.train, train_transform(self.data_config, options.aug),
                                 self.train_cache)
        order = self.labelled_sampler or (
            RandomSampler(train_set, generator=self.generator) if dist.active else None)
        train_loader = build_loader(
            train_set, options.batch_size, workers=self.workers, generator=self.generator,
            shuffle=True, sampler=shard(order, dist),
            drop_last=True, pin_memory=pin)
        val_set = ImageDataset(self.data.val, eval_transform(self.data_config),
                               self._cache([p for p, _ in self.data.val]))
        val_loader = build_loader(
            val_set, options.batch_size, workers=self.workers, pin_memory=pin,
            sampler=shard(range(len(val_set)), dist, even=False) if dist.active else None)
        return train_loader, val_loader

    def _build_optimization(self) -> tuple[torch.optim.Optimizer, Any, ModelEmaV3 | None,
                                           torch.amp.GradScaler]:
        """(optimizer, the plan's timm schedule over the loader's updates per epoch or None,
        EMA or None, gradient scaler): timm's factories, fed by the plan."""
        options = self.options
        layer_decay = {"layer_decay": options.layer_decay} if options.layer_decay else {}
        optimizer = create_optimizer_v2(self.model, opt=options.opt, lr=options.lr,
                                        weight_decay=options.weight_decay, **layer_decay)
        scheduler = (create_scheduler_v2(optimizer, updates_per_epoch=len(self.train_loader),
                                         **self.plan.schedule)[0]
                     if self.plan.schedule is not None else None)
        ema = (ModelEmaV3(self.model, decay=options.ema_decay, use_warmup=True)
               if options.ema else None)
        fp16 = bool(options.amp) and amp_dtype(self.device) == torch.float16
        return optimizer, scheduler, ema, torch.amp.GradScaler(self.device.type, enabled=fp16)

    def _build_loss(self) -> nn.Module:
        options = self.options
        weight = (inverse_frequency([y for _, y in self.data.train], len(self.data.classes))
                  .float() if options.class_weights else None)
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=options.label_smoothing
                                   ).to(self.device)

    def _forward_model(self) -> nn.Module:
        """What the step calls: the model, or its DDP wrapper under torchrun (DDP needs the
        trainable set fixed before wrapping)."""
        if not self.dist.active:
            return self.model
        self.set_trainable(self.options.freeze_backbone)
        device = self.device
        return DistributedDataParallel(
            self.model, device_ids=[device.index] if device.type == "cuda" else None)

    def _pseudo_strategy(self) -> PseudoStrategy | None:
        options = self.options
        if options.pseudolabel == "none":
            return None
        assert options.data is not None  # TrainOptions requires it without --resume
        test = options.data / "test"
        pool = load_pool(options.pseudo_data or options.data / PSEUDO_SPLIT,
                         [p for p, _ in self.data.val]
                         + (list_images(test) if test.is_dir() else []))
        context = PseudoContext(options, self.data.classes, self.data.train, self.data_config,
                                self.generator, self.workers, self.dist, self.device,
                                self.reporter, self.labelled_sampler)
        if options.pseudolabel == "per-batch":
            return PerBatchPseudo(context, pool, self.model)
        pool_cache = self._cache(pool.paths)
        return PerEpochPseudo(context, pool, self.train_cache, pool_cache,
                              teacher=self.eval_model)

    def _run_dir(self) -> Path:
        """The run folder: the resumed one, or a new one chosen by rank 0."""
        options = self.options
        run_dir = options.resume or (new_run_dir(options.project, options.name)
                                      if self.dist.main else None)
        if self.dist.active:
            shared = [run_dir]
            torch.distributed.broadcast_object_list(shared, src=0)
            run_dir = shared[0]
        assert run_dir is not None  # rank 0 always chose one
        return run_dir

    @staticmethod
    def _weights(model: nn.Module, keep: bool = False) -> dict[str, torch.Tensor]:
        """The model's weights on the CPU, to save; `keep`: a copy that further training
        leaves as it is (on a CPU, .cpu() returns the very tensors)."""
        return {k: v.detach().cpu().clone() if keep else v.detach().cpu()
                for k, v in model.state_dict().items()}

    def _restore(self, last: ResumeCheckpoint) -> None:
        if last.get("wise_anchor"):
            self.wise_anchor = last["wise_anchor"]
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
        options = self.options
        head_only = options.freeze_backbone or epoch < options.freeze_epochs
        if not self.dist.active:  # under DDP the trainable set is fixed before wrapping
            self.set_trainable(head_only)
        self._set_train_mode(head_only)
        loss_sum, correct, seen, waited = 0.0, 0, 0, 0.0
        unreadable: set[int] = set()
        # Batch-level augmentation draws from its own generator, seeded like the epoch's others.
        lighting = torch.Generator().manual_seed(_epoch_seed(options, epoch) * 1_000
                                                 + self.dist.rank)
        start = time.perf_counter()
        planned, steps = len(self.train_loader), len(loader)
        with self.reporter.bar(f"epoch {epoch + 1}/{options.epochs}",
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
                images = self.finish(to_device(images, self.device, options.channels_last),
                                     lighting)
                labels = labels.to(self.device, non_blocking=True)
                # The step: forward (with pseudo-labels weighted in), backward, update, EMA.
                with autocast(self.device, options.amp):
                    loss, logits, labelled = self._loss(images, labels, indices)
                value = float(loss.detach())
                if not math.isfinite(value):  # before the step: the weights stay finite
                    raise TrainingDiverged(
                        f"The training loss became {value} in epoch {epoch + 1}, step "
                        f"{step + 1}: the run diverged (--lr {options.lr} too high?). "
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
    def validate(self, keep_outputs: bool = False) -> Validation:
        """Validation metrics of `eval_model` over the whole val split and its confusion; with
        `keep_outputs`, also every rank's logits, labels and features (what a pseudo-label
        strategy fits its teacher on)."""
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
            with autocast(self.device, self.options.amp):
                logits, features = scored(to_device(images, self.device,
                                                    self.options.channels_last))
            logits = logits.float().cpu()
            loss_sum += float(plain_loss(logits, labels))
            seen += len(labels)
            cm += confusion_matrix(labels, logits.argmax(1), n)
            if keep_outputs:
                kept.append((logits, labels, features.float().cpu()))
        total, loss_sum, seen = all_reduce_sum(cm, loss_sum, seen)  # the whole validation set
        cm, loss_sum, seen = total.long(), float(loss_sum), float(seen)
        report = classification_report(cm, self.data.classes)
        metrics = {"val_loss": loss_sum / max(seen, 1), "val_acc": report["accuracy"],
                   "val_balanced_acc": report["balanced_accuracy"],
                   "val_macro_f1": report["macro_f1"]}
        outputs = self._gather(kept) if keep_outputs and kept else None
        return Validation(metrics, cm, outputs)

    def _gather(self, kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
                ) -> ValidationOutputs:
        """Every rank's share of the validation outputs (so that all ranks fit the same)."""
        parts = [torch.cat(column) for column in zip(*kept, strict=True)]
        if self.dist.active:
            shares: list[Any] = [None] * self.dist.world
            torch.distributed.all_gather_object(shares, parts)
            parts = [torch.cat(column) for column in zip(*shares, strict=True)]
        logits, labels, features = (part.numpy() for part in parts)
        return ValidationOutputs(logits, labels, features)

    def _validate_outputs(self) -> ValidationOutputs:
        outputs = self.validate(keep_outputs=True).outputs
        if outputs is None:
            raise DataError("The validation split yielded no readable image: pseudo-labels "
                            "need a validated teacher. Check the val/ folder of --data.")
        return outputs

    # --- checkpoints and records -------------------------------------------------------------

    def checkpoint(self, epoch: int, row: dict[str, Any]) -> Checkpoint:
        """best.pt: the self-contained part, enough to evaluate, predict and export."""
        return {
            "arch": resolve_arch(self.options.arch),
            "classes": self.data.classes,
            "data_config": self.data_config,
            "crop": crop_settings(self.options.data) if self.options.data else {},
            "model": self._weights(self.eval_model),
            "metrics": row,
            "epoch": epoch,
            "options": options_record(self.options),
            "wastecls_version": __version__,
        }

    def resume_checkpoint(self, epoch: int, row: dict[str, Any]) -> ResumeCheckpoint:
        """last.pt: the checkpoint plus what it takes to continue training exactly."""
        return self.checkpoint(epoch, row) | {  # type: ignore[return-value]
            "model": self._weights(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "scaler": self.scaler.state_dict(),
            "train_state": self.state,
            "wise_anchor": self.wise_anchor or {},
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
        state, best = self.state, improved(self.options.monitor, row, self.state)
        if best:
            state.update(best=row[self.options.monitor], best_val_loss=row["val_loss"],
                         best_epoch=row["epoch"], bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = row["epoch"]
        return best

    # --- the loop ----------------------------------------------------------------------------

    def fit(self, log: MetricsLog, trackers: list[Tracker]) -> bool:
        """The epoch loop from where the state stands; returns whether it stopped early."""
        options, state = self.options, self.state
        known_bad = {i for i, (p, _) in enumerate(self.data.train)  # indices; the state: paths
                     if str(p) in state["skipped"]}
        for epoch in range(state["epoch"], options.epochs):
            seed = _epoch_seed(options, epoch)
            seed_everything(seed)
            self.generator.manual_seed(seed)
            loader = self.train_loader
            if self.pseudo is not None:
                if self.pseudo.needs_calibration(epoch):  # its teacher must be validated first
                    self.pseudo.after_validation(self._validate_outputs())
                loader = self.pseudo.begin_epoch(epoch) or loader
            row_train, unreadable = self.train_one_epoch(epoch, loader)
            if options.wise_ft < 1 and epoch + 1 == options.freeze_epochs:
                # The head fitted, nothing else yet: WiSE-FT's other end.
                self.wise_anchor = self._weights(self.model, keep=True)
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
            validation = self.validate(keep_outputs=self.pseudo is not None)
            if self.pseudo is not None and validation.outputs is not None:
                self.pseudo.after_validation(validation.outputs)
            if self.scheduler is not None:
                self.scheduler.step(epoch + 1)
            row = {"epoch": epoch + 1, **row_train, **validation.metrics, "lr": lr}
            row = {k: row[k] for k in METRIC_COLUMNS}
            if self.pseudo is not None:
                row |= self.pseudo.columns()
            best = self.record(row)
            log.append(row)
            self.reporter.info(_format_row(row))
            with interrupts_held():
                self.save(row, validation.confusion, best, log, trackers)
            if options.patience and state["bad_epochs"] >= options.patience:
                self.reporter.info(f"early stop: no {options.monitor} improvement for "
                                   f"{options.patience} epochs")
                return True
        return False

    def interpolate_best(self) -> dict[str, float]:
        """WiSE-FT (Wortsman et al. 2022): best.pt's weights moved to `--wise-ft` of the way
        from the weights before fine-tuning, validated, and written back; returns the
        validation metrics of the fine-tuned and of the interpolated weights."""
        share = self.options.wise_ft
        assert self.wise_anchor is not None  # taken at the start or after the head fit
        best_path = self.run_dir / "best.pt"
        best = load_checkpoint(best_path)
        tuned = best["model"]
        mixed = {k: (1 - share) * self.wise_anchor[k].to(v.dtype) + share * v
                 if v.is_floating_point() else v for k, v in tuned.items()}
        self.eval_model.load_state_dict(mixed)
        validation = self.validate()
        metrics = {**best["metrics"], **validation.metrics, "wise_ft": share}
        save_checkpoint(best_path, {**best, "model": mixed, "metrics": metrics})
        return {"fine_tuned": best["metrics"]["val_acc"], "interpolated": metrics["val_acc"]}
