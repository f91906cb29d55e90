"""`wastecls train`: fine-tune a timm model, keep the best checkpoint, survive interruption.

Read it top to bottom: `train()` sets up (data, model, optimiser, run folder), then runs the
epoch loop — train one epoch, validate, log, checkpoint, maybe stop. Each epoch's randomness
(shuffling, augmentation, dropout) is derived from (seed, epoch) alone, so a run resumed from
last.pt at epoch k replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
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
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import RandomSampler

from waste_cli import __version__
from waste_cli.backends import TorchRunner
from waste_cli.console import Reporter
from waste_cli.data.loading import (
    ImageDataset,
    build_loader,
    cache_images,
    weighted_sampler,
)
from waste_cli.data.prepare import split_groups
from waste_cli.data.scan import dataset_classes, labeled_samples, list_images
from waste_cli.data.transforms import (
    BatchFinish,
    data_config,
    eval_transform,
    train_transform,
)
from waste_cli.distributed import (
    Distributed,
    all_gather_union,
    all_reduce_sum,
    elastic_resume,
    init_distributed,
    shard,
)
from waste_cli.errors import ConfigError, DataError, WasteclsError
from waste_cli.inference import default_workers, run_labelled
from waste_cli.metrics import classification_report, confusion_matrix
from waste_cli.models import (
    create_model,
    freeze_layers,
    load_checkpoint,
    resolve_arch,
    save_checkpoint,
)
from waste_cli.plots import plot_confusion_matrix, plot_curves
from waste_cli.pseudo import (
    FixMatchState,
    MixedSampler,
    PseudoPool,
    PseudoStats,
    TwoViews,
    fixmatch_targets,
    label_pool,
    load_pool,
    masked_loss,
    pseudo_weight,
    read_manifests,
)
from waste_cli.runtime import (
    autocast,
    keep_freed_memory,
    resolve_device,
    seed_everything,
    to_device,
)
from waste_cli.settings import TrainSettings, write_config
from waste_cli.tracking import MetricsLog, NeptuneTracker, Tracker, new_run_dir, write_json

__all__ = ["TrainResult", "TrainingInterrupted", "load_train_data", "train"]

# Settings that describe this machine, not the experiment: a resumed run takes them anew.
MACHINE_SETTINGS = ("device", "workers", "quiet", "nproc", "neptune", "neptune_mode",
                    "neptune_project")
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc",
                  "val_macro_f1", "lr", "images_per_s", "seconds", "data_seconds")


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
    train += read_manifests(settings.extra_labels, classes)
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
    given = settings.model_fields_set & {*MACHINE_SETTINGS, "epochs"}
    saved = last["settings"] | {k: getattr(settings, k) for k in given}
    if saved["epochs"] < last["train_state"]["epoch"]:
        raise ConfigError(f"--epochs {saved['epochs']} is below the {last['train_state']['epoch']}"
                          f" epochs {settings.resume} has already trained.")
    if saved["epochs"] != last["settings"]["epochs"]:
        last = {k: v for k, v in last.items() if k != "scheduler"}  # re-planned for the new length
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


def _set_trainable(s: _Setup, head_only: bool) -> None:
    """Only the classifier learns while `head_only`; otherwise all but the --freeze-layers."""
    head = {id(p) for p in s.net.get_classifier().parameters()}
    for param in s.net.parameters():
        param.requires_grad = id(param) in head if head_only else id(param) not in s.fixed_params


def _set_train_mode(s: _Setup, head_only: bool) -> None:
    """Train mode, except for what does not learn: a frozen backbone and the --freeze-layers
    stay in eval mode so their BatchNorm statistics are kept."""
    s.net.train(not head_only)
    for module in s.fixed_layers:
        module.eval()
    s.net.get_classifier().train()


@dataclass
class _Setup:
    """Everything the epoch loop needs, built once by `_setup`."""

    settings: TrainSettings
    device: torch.device
    dist: Distributed
    data: TrainData
    model: nn.Module  # what the loop calls: DistributedDataParallel(net) under torchrun
    net: nn.Module  # the plain model: checkpoints, EMA, freezing, evaluation
    fixed_layers: list[nn.Module]  # --freeze-layers: never learn, always in eval mode
    fixed_params: frozenset[int]  # ids of their parameters, and of loose ones (a ViT's pos_embed)
    ema: ModelEmaV3 | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    generator: torch.Generator
    config: dict[str, Any]
    finish: BatchFinish  # brightness, contrast and normalisation of a uint8 batch
    run_dir: Path
    workers: int
    train_cache: list[Any] | None
    pool: PseudoPool | None
    pool_cache: list[Any] | None


@dataclass
class _PseudoEpoch:
    """How pseudo-labels enter this epoch's loss."""

    weight: float
    n_labelled: int = 0  # per-epoch: dataset indices from here on are pseudo-labelled
    unlabelled: Iterator[Any] | None = None  # per-batch: batches of (weak, strong) views
    fixmatch: FixMatchState | None = None


def _default_workers(settings: TrainSettings, device: torch.device) -> int:
    """Loader processes when --workers is not given.

    None when training on the CPU from --cache ram: augmenting a decoded 288 px image costs
    about 1.6 ms, and loader processes forked from the large training process slowed its steps
    by 10-30% (copy-on-write faults, then a third process on the compute cores; BENCHMARKS.md).
    A GPU leaves the cores free, and there the loader processes are what keeps it fed."""
    return 0 if settings.cache == "ram" and device.type == "cpu" else default_workers()


def _cached(settings: TrainSettings, config: dict[str, Any], paths: list[Path],
            reporter: Reporter) -> list[Any] | None:
    if settings.cache != "ram":
        return None
    short = math.ceil(config["input_size"][-1] / config["crop_pct"])
    return cache_images(paths, short, os.cpu_count() or 1, reporter)  # threads: no fork


def _labelled_sampler(settings: TrainSettings, data: TrainData, generator: torch.Generator):
    if settings.sampler != "weighted":
        return None
    return weighted_sampler([y for _, y in data.train], len(data.classes), generator)


def _setup(settings: TrainSettings, last: dict[str, Any] | None, reporter: Reporter,
           dist: Distributed, device: torch.device) -> _Setup:
    if dist.active and settings.freeze_epochs:
        raise ConfigError("--freeze-epochs is not supported with several processes (DDP needs "
                          "the same trainable parameters throughout); use --freeze-backbone.")
    seed_everything(settings.seed)
    if device.type == "cpu":
        keep_freed_memory()
    data = load_train_data(settings)
    pool = None
    if settings.pseudolabel != "none":
        assert settings.data is not None
        test = settings.data / "test"
        pool = load_pool(settings.pseudo_data or settings.data / "pseudolabel",
                         [p for p, _ in data.val] + (list_images(test) if test.is_dir() else []))
    model = create_model(settings.arch, len(data.classes), drop_rate=settings.drop_rate,
                         pretrained=settings.pretrained and last is None,
                         weights=settings.weights if last is None else None)
    config = data_config(model, settings.img_size)
    # Before the optimizer is built, so that fixed layers are not even in it.
    fixed_layers = freeze_layers(model, settings.freeze_layers) if settings.freeze_layers else []
    fixed_params = frozenset(id(p) for p in model.parameters() if not p.requires_grad)
    model.to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    generator = torch.Generator()
    workers = (_default_workers(settings, device) if settings.workers is None
               else settings.workers)
    pin = device.type == "cuda"
    train_cache = _cached(settings, config, [p for p, _ in data.train], reporter)
    val_cache = _cached(settings, config, [p for p, _ in data.val], reporter)
    pool_cache = (_cached(settings, config, pool.paths, reporter)
                  if pool is not None and settings.pseudolabel == "per-epoch" else None)
    train_set = ImageDataset(data.train, train_transform(config, settings.aug), train_cache)
    order = _labelled_sampler(settings, data, generator) or (
        RandomSampler(train_set, generator=generator) if dist.active else None)
    train_loader = build_loader(train_set, settings.batch_size, workers=workers,
                                generator=generator, shuffle=True, sampler=shard(order, dist),
                                drop_last=len(train_set) > settings.batch_size, pin_memory=pin)
    val_set = ImageDataset(data.val, eval_transform(config), val_cache)
    val_loader = build_loader(val_set, settings.batch_size, workers=workers, pin_memory=pin,
                              sampler=shard(range(len(val_set)), dist, even=False)
                              if dist.active else None)
    optimizer = create_optimizer_v2(model, opt=settings.opt, lr=settings.lr,
                                    weight_decay=settings.weight_decay,
                                    **({"layer_decay": settings.layer_decay}
                                       if settings.layer_decay else {}))
    scheduler = _scheduler(settings, optimizer, len(train_loader))
    ema = ModelEmaV3(model, decay=settings.ema_decay, use_warmup=True) if settings.ema else None
    fp16 = settings.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    run_dir = settings.resume or (new_run_dir(settings.project, settings.name)
                                  if dist.main else None)
    if dist.active:  # one run folder, chosen by rank 0
        shared = [run_dir]
        torch.distributed.broadcast_object_list(shared, src=0)
        run_dir = shared[0]
    if last is not None:
        model.load_state_dict(last["model"])
        optimizer.load_state_dict(last["optimizer"])
        scaler.load_state_dict(last["scaler"])
        if ema is not None:
            ema.load_state_dict(last["ema"])
        if scheduler is not None and "scheduler" in last:
            scheduler.load_state_dict(last["scheduler"])
    setup = _Setup(settings, device, dist, data, model, model, fixed_layers, fixed_params, ema,
                   optimizer, scheduler, scaler, _loss_fn(settings, data).to(device), train_loader,
                   val_loader, generator, config, BatchFinish(config, settings.aug), run_dir,
                   workers, train_cache, pool, pool_cache)
    if dist.active:  # DDP needs the trainable set fixed before wrapping
        _set_trainable(setup, settings.freeze_backbone)
        setup.model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return setup


def _cycle(loader: torch.utils.data.DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


def _epoch_plan(s: _Setup, epoch: int, reporter: Reporter):
    """This epoch's loader and pseudo-label plan (None: labelled data only)."""
    settings = s.settings
    weight = pseudo_weight(settings.pseudo_weight, settings.pseudo_start, settings.pseudo_ramp,
                           epoch)
    if s.pool is None or weight == 0:
        return s.train_loader, None, None
    if settings.pseudolabel == "per-batch":
        views = TwoViews(train_transform(s.config, "light", uint8=False),  # stacked with
                         train_transform(s.config, "strong"))  # strong views: float both
        pool_set = ImageDataset([(p, -1) for p in s.pool.paths], views)
        loader = build_loader(pool_set, settings.batch_size, workers=s.workers,
                              generator=s.generator, shuffle=True,
                              sampler=shard(RandomSampler(pool_set, generator=s.generator),
                                             s.dist) if s.dist.active else None,
                              drop_last=len(s.pool.paths) > settings.batch_size)
        state = FixMatchState(s.pool, s.data.classes)
        return s.train_loader, _PseudoEpoch(weight, unlabelled=_cycle(loader),
                                            fixmatch=state), None
    # per-epoch: label the whole pool with the current (EMA) model, keep the confident ones.
    model = s.ema.module if s.ema is not None else s.net
    runner = TorchRunner(model, s.data.classes, s.config, s.device, settings.channels_last)
    mine = list(range(s.dist.rank, len(s.pool.paths), s.dist.world))  # this rank's share
    logits = torch.full((len(s.pool.paths), len(s.data.classes)), float("nan"))
    logits[mine] = torch.from_numpy(run_labelled(
        runner, [(s.pool.paths[i], -1) for i in mine], settings.batch_size, s.workers, reporter,
        "pseudo-label pool", spread_model=False)[0])
    if s.dist.active:
        shares: list[Any] = [None] * s.dist.world
        torch.distributed.all_gather_object(shares, (mine, logits[mine]))
        for indices, part in shares:
            logits[indices] = part
    accepted, stats = label_pool(logits, s.pool, s.data.classes, settings.pseudo_threshold)
    samples = s.data.train + [(s.pool.paths[i], y) for i, y in accepted]
    cache = (s.train_cache + [s.pool_cache[i] for i, _ in accepted]
             if s.train_cache is not None and s.pool_cache is not None else None)
    dataset = ImageDataset(samples, train_transform(s.config, settings.aug), cache)
    sampler = shard(MixedSampler(_labelled_sampler(settings, s.data, s.generator),
                                  len(s.data.train), len(accepted), s.generator), s.dist)
    loader = build_loader(dataset, settings.batch_size, workers=s.workers,
                          generator=s.generator, sampler=sampler, drop_last=True)
    return loader, _PseudoEpoch(weight, n_labelled=len(s.data.train)), stats


def _pseudo_columns(s: _Setup, stats: PseudoStats | None) -> dict[str, float]:
    """metrics.csv columns of the pseudo-label pool (zeros in epochs that do not use it)."""
    if s.pool is None:
        return {}
    stats = stats or PseudoStats(len(s.pool.paths), 0, {}, 0, 0)
    return stats.row(s.data.classes, has_truth=bool(s.pool.truth))


def _step_loss(s: _Setup, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
               pseudo: _PseudoEpoch | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, logits, mask of labelled rows) for one batch; pseudo-labels weighted in.

    Per-batch mode labels the weak views first, then runs the labelled images and the strong
    views through the model in one forward pass (one backward, as DDP requires)."""
    strong = None
    if pseudo is not None and pseudo.unlabelled is not None:
        views, _, u_indices, _ = next(pseudo.unlabelled)
        weak, strong = (to_device(views[:, k], s.device, s.settings.channels_last)
                        for k in (0, 1))
        u_labels, u_mask = fixmatch_targets(s.net, weak, u_indices,
                                            s.settings.pseudo_threshold, pseudo.fixmatch)
        images = torch.cat([images, strong])
    logits = s.model(images)
    if strong is not None:
        logits, u_logits = logits[: len(labels)], logits[len(labels) :]
    labelled = torch.ones_like(labels, dtype=torch.bool)
    if pseudo is not None and pseudo.n_labelled:
        labelled = (indices < pseudo.n_labelled).to(labels.device)
    loss = s.loss_fn(logits[labelled].float(), labels[labelled]) if labelled.any() else \
        logits.sum() * 0
    if not labelled.all():
        loss = loss + pseudo.weight * s.loss_fn(logits[~labelled].float(), labels[~labelled])
    if strong is not None:
        loss = loss + pseudo.weight * masked_loss(u_logits, u_labels, u_mask)
    return loss, logits, labelled


def _epoch_seed(settings: TrainSettings, epoch: int) -> int:
    """Where all of an epoch's randomness starts, so that a resumed run replays it."""
    return settings.seed * 1_000_003 + epoch


def _train_one_epoch(s: _Setup, epoch: int, updates: int, reporter: Reporter,
                     skipped: set[int], loader: torch.utils.data.DataLoader,
                     pseudo: _PseudoEpoch | None) -> tuple[dict[str, float], int]:
    """One pass over the training data; returns its metrics and the new update count."""
    head_only = s.settings.freeze_backbone or epoch < s.settings.freeze_epochs
    if not s.dist.active:  # under DDP the trainable set is fixed before wrapping
        _set_trainable(s, head_only)
    _set_train_mode(s, head_only)
    loss_sum, correct, seen, waited = 0.0, 0, 0, 0.0
    # Batch-level augmentation draws from its own generator, seeded like the epoch's others.
    lighting = torch.Generator().manual_seed(_epoch_seed(s.settings, epoch) * 1_000 + s.dist.rank)
    start = time.perf_counter()
    planned, steps = len(s.train_loader), len(loader)
    with reporter.bar(f"epoch {epoch + 1}/{s.settings.epochs}", len(loader.sampler)) as bar:
        batches = iter(loader)
        for step in itertools.count():
            ready = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            waited += time.perf_counter() - ready  # timm's "data time": is loading the limit?
            images, labels, indices, bad = batch
            skipped.update(i for i in bad if i < len(s.data.train))
            if not len(labels):
                continue
            images = s.finish(to_device(images, s.device, s.settings.channels_last), lighting)
            labels = labels.to(s.device, non_blocking=True)
            with autocast(s.device, s.settings.amp):
                loss, logits, labelled = _step_loss(s, images, labels, indices, pseudo)
            s.optimizer.zero_grad(set_to_none=True)
            s.scaler.scale(loss).backward()
            s.scaler.step(s.optimizer)
            s.scaler.update()
            updates += 1
            if s.scheduler is not None:  # progress in planned steps: epochs may grow with
                s.scheduler.step_update(epoch * planned + (step + 1) * planned // steps)
            if s.ema is not None:
                s.ema.update(s.net, step=updates)
            loss_sum += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == labels)[labelled].sum())
            seen += int(labelled.sum())
            bar.advance(len(labels) + len(bad), loss=loss_sum / max(seen, 1),
                        acc=correct / max(seen, 1), img_s=seen / bar.elapsed)
    seconds = time.perf_counter() - start
    loss_sum, correct, seen = (float(t) for t in all_reduce_sum(loss_sum, correct, seen))
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
            "images_per_s": seen / seconds, "seconds": seconds, "data_seconds": waited}, updates


@torch.inference_mode()
def _val_logits(model: nn.Module, s: _Setup) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(float32 logits on the CPU, labels) per validation batch, readable images only."""
    model.eval()
    for images, labels, _, _ in s.val_loader:
        if len(labels):
            with autocast(s.device, s.settings.amp):
                logits = model(to_device(images, s.device, s.settings.channels_last))
            yield logits.float().cpu(), labels


def _validate(s: _Setup) -> tuple[dict[str, float], torch.Tensor]:
    model = s.ema.module if s.ema is not None else s.net
    if s.dist.active:  # every rank validates rank 0's weights and BatchNorm statistics
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)
    n = len(s.data.classes)
    cm = torch.zeros(n, n, dtype=torch.long)
    loss_sum, seen = 0.0, 0
    plain_loss = nn.CrossEntropyLoss(reduction="sum")
    for logits, labels in _val_logits(model, s):
        loss_sum += float(plain_loss(logits, labels))
        seen += len(labels)
        cm += confusion_matrix(labels, logits.argmax(1), n)
    total, loss_sum, seen = all_reduce_sum(cm, loss_sum, seen)  # the whole validation set
    cm, loss_sum, seen = total.long(), float(loss_sum), float(seen)
    report = classification_report(cm, s.data.classes)
    return {"val_loss": loss_sum / max(seen, 1), "val_acc": report["accuracy"],
            "val_balanced_acc": report["balanced_accuracy"],
            "val_macro_f1": report["macro_f1"]}, cm


def _improved(settings: TrainSettings, row: dict[str, Any], state: dict[str, Any]) -> bool:
    """Whether this epoch beats the best so far on --monitor.

    Accuracy and macro-F1 move in steps of one validation image, so on a small val split ties
    are common; a tie goes to the epoch with the lower validation loss, the finer measure.
    """
    value, best = row[settings.monitor], state["best"]
    if best is None:
        return True
    if settings.monitor == "val_loss":
        return value < best
    tie_won = value == best and row["val_loss"] < state.get("best_val_loss", math.inf)
    return value > best or tie_won


def _checkpoint(s: _Setup, epoch: int, row: dict[str, Any]) -> dict[str, Any]:
    """The self-contained part of a checkpoint: enough to evaluate, predict and export."""
    model = s.ema.module if s.ema is not None else s.net
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
        "model": {k: v.detach().cpu() for k, v in s.net.state_dict().items()},
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
    """Log the epoch, keep best.pt (and its confusion matrix) if it improved, write last.pt.

    Every rank updates `state` the same way (metrics are reduced); only rank 0 writes files.
    """
    run, epoch, write = s.run_dir, row["epoch"], s.dist.main
    log.append(row)
    reporter.info(_format_row(row))
    if _improved(s.settings, row, state):
        state |= {"best": row[s.settings.monitor], "best_val_loss": row["val_loss"],
                  "best_epoch": epoch, "bad_epochs": 0}
        if write:
            save_checkpoint(run / "best.pt", _checkpoint(s, epoch, row))
            plot_confusion_matrix(cm.numpy(), s.data.classes, run / "confusion_matrix.png",
                                  f"validation, epoch {epoch}")
            write_json(run / "val_report.json", {"epoch": epoch, "confusion_matrix":
                       cm.tolist(), **classification_report(cm, s.data.classes)})
    else:
        state["bad_epochs"] += 1
    state["epoch"] = epoch
    if write:
        save_checkpoint(run / "last.pt", _resume_state(s, epoch, row, state))
        plot_curves(log.rows, run / "curves.png")
        for tracker in trackers:
            tracker.log_epoch(row)


def _format_row(row: dict[str, Any]) -> str:
    return (f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f} acc "
            f"{row['train_acc']:.3f}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} "
            f"bal {row['val_balanced_acc']:.3f} f1 {row['val_macro_f1']:.3f}  "
            f"lr {row['lr']:.2e}  {row['images_per_s']:.1f} img/s  {row['seconds']:.0f}s")


def _run_epochs(s: _Setup, state: dict[str, Any], log: MetricsLog, trackers: list[Tracker],
                reporter: Reporter) -> bool:
    """The epoch loop; returns whether it stopped early."""
    settings = s.settings
    skipped = {i for i, (p, _) in enumerate(s.data.train) if str(p) in state["skipped"]}
    for epoch in range(state["epoch"], settings.epochs):
        seed = _epoch_seed(settings, epoch)
        seed_everything(seed)
        s.generator.manual_seed(seed)
        loader, pseudo, pseudo_stats = _epoch_plan(s, epoch, reporter)
        known = set(skipped)
        row_train, state["updates"] = _train_one_epoch(s, epoch, state["updates"], reporter,
                                                       skipped, loader, pseudo)
        if pseudo is not None and pseudo.fixmatch is not None:
            pseudo_stats = pseudo.fixmatch.stats()
        skipped = all_gather_union(s.dist, skipped)
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
            _record_epoch(s, {k: row[k] for k in METRIC_COLUMNS}
                          | _pseudo_columns(s, pseudo_stats), cm, state, log, trackers, reporter)
        if settings.patience and state["bad_epochs"] >= settings.patience:
            reporter.info(f"early stop: no {settings.monitor} improvement for "
                          f"{settings.patience} epochs")
            return True
    return False


def train(settings: TrainSettings, reporter: Reporter | None = None) -> TrainResult:
    """Train a classifier; write the run folder; return the best epoch's metrics.

    Under torchrun (WORLD_SIZE > 1) every process runs this; rank 0 alone prints and writes.
    """
    dist, device = init_distributed(resolve_device(settings.device))
    settings, last = elastic_resume(settings), None
    if settings.resume is not None:
        settings, last = _resumed_settings(settings)
    reporter = reporter or Reporter(settings.quiet)
    if not dist.main:
        reporter = Reporter(quiet=True)
    trackers: list[Tracker] = []
    if settings.neptune and dist.main:
        trackers.append(NeptuneTracker(json.loads(settings.model_dump_json()),
                                       settings.neptune_mode, settings.neptune_project,
                                       settings.name))
    try:
        s = _setup(settings, last, reporter, dist, device)
        run = s.run_dir
        state = dict(last["train_state"]) if last else {
            "epoch": 0, "updates": 0, "best": None, "best_epoch": 0, "bad_epochs": 0,
            "skipped": []}
        log = MetricsLog.resume(run / "metrics.csv", state["epoch"], write=dist.main)
        if dist.main:
            write_config(settings, run / "config.yaml")
            if last is None:
                save_checkpoint(run / "last.pt", _resume_state(s, 0, {}, state))
        reporter.info(f"training {settings.arch} on {len(s.data.train)} images "
                      f"({len(s.data.val)} val, {len(s.data.classes)} classes) on {s.device}"
                      f"{f' x {dist.world} processes' if dist.active else ''}; run folder {run}")
        start_time = time.perf_counter()
        try:
            stopped_early = _run_epochs(s, state, log, trackers, reporter)
        except KeyboardInterrupt:
            raise TrainingInterrupted(
                f"Interrupted during epoch {state['epoch'] + 1}. {run / 'last.pt'} holds epoch "
                f"{state['epoch']}; continue with: wastecls train --resume {run}"
            ) from None
    finally:
        if dist.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    best_row = next(r for r in log.rows if int(r["epoch"]) == state["best_epoch"])
    result = TrainResult(run, state["best_epoch"], best_row, state["epoch"], stopped_early,
                         state["skipped"], time.perf_counter() - start_time)
    summary = {"best_epoch": result.best_epoch, "monitor": settings.monitor,
               "best": result.best, "epochs_run": result.epochs_run,
               "stopped_early": stopped_early, "skipped_images": result.skipped_images,
               "seconds": result.seconds, "classes": s.data.classes,
               "train_images": len(s.data.train), "val_images": len(s.data.val),
               "device": str(s.device), "processes": dist.world, "data_config": s.config}
    if dist.main:
        write_json(run / "summary.json", summary)
        for tracker in trackers:
            tracker.finish(summary, {"confusion_matrix": run / "confusion_matrix.png",
                                     "curves": run / "curves.png",
                                     "classification_report": run / "val_report.json"})
    return result
