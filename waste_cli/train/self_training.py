"""Pseudo-label strategies the trainer calls: per-epoch self-training (Lee 2013) and per-batch
FixMatch-style training.

A strategy is asked twice: `begin_epoch` (this epoch's loader, or None for the labelled one)
and, while `active`, `loss` for each batch. Labels are always attached to images by dataset
index, never by position in a shuffled batch. Validation and test images are never in the pool.
When `prepare --unlabeled-frac` recorded the hidden truth, precision is measured.

A pool image is accepted as `wastecls pseudolabel` accepts one: its calibrated probability
reaches --pseudo-threshold and it does not look unfamiliar. Both are fitted on the latest
validation (`TeacherCalibration`), since the model changes every epoch.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Sampler

from waste_cli.confidence.fit import NEIGHBOURS, fit_temperature, knn_distance, normalized
from waste_cli.core.console import Reporter
from waste_cli.core.errors import DataError
from waste_cli.core.formats import plain_cell
from waste_cli.core.runtime import to_device
from waste_cli.data.batching import run_labelled
from waste_cli.data.loading import ImageDataset, build_loader
from waste_cli.data.scan import TRUTH_CSV, list_images
from waste_cli.data.transforms import train_transform
from waste_cli.model.backends import TorchRunner
from waste_cli.model.heads import FeatureClassifier
from waste_cli.options import TrainOptions
from waste_cli.train.distributed import Distributed, shard

__all__ = [
    "MixedSampler",
    "PerBatchPseudo",
    "PerEpochPseudo",
    "PseudoContext",
    "PseudoPool",
    "PseudoStats",
    "PseudoStrategy",
    "TeacherCalibration",
    "label_pool",
    "load_pool",
    "masked_loss",
    "pseudo_weight",
    "read_manifests",
]

LossResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # loss, logits, labelled rows


@dataclass
class PseudoPool:
    paths: list[Path]
    truth: dict[str, str]  # file name -> hidden true class, when prepare recorded it


@dataclass
class PseudoStats:
    """What one epoch did with the pool; becomes metrics.csv columns."""

    pool: int
    accepted: int
    per_class: dict[str, int]
    correct: int
    with_truth: int
    unfamiliar: int = 0  # images turned away as unlike the validation images

    def row(self, classes: list[str], has_truth: bool) -> dict[str, float]:
        row: dict[str, float] = {"pseudo_pool": self.pool, "pseudo_accepted": self.accepted,
                                 "pseudo_unfamiliar": self.unfamiliar}
        row |= {f"pseudo_{c}": self.per_class.get(c, 0) for c in classes}
        if has_truth:
            row["pseudo_precision"] = (self.correct / self.with_truth if self.with_truth
                                       else float("nan"))
        return row


def load_pool(folder: Path, excluded: list[Path]) -> PseudoPool:
    """The unlabelled images of `folder`, minus any image also used for validation/testing."""
    if not folder.is_dir():
        raise DataError(f"Pseudo-label pool {folder} does not exist; make one with `wastecls "
                        "prepare --unlabeled-frac F` or pass --pseudo-data DIR.")
    blocked = {p.resolve() for p in excluded}
    paths = [p for p in list_images(folder) if p.resolve() not in blocked]
    if not paths:
        raise DataError(f"Pseudo-label pool {folder} holds no images.")
    truth: dict[str, str] = {}
    truth_file = folder.parent / TRUTH_CSV
    if truth_file.is_file():
        with open(truth_file, newline="", encoding="utf-8") as handle:
            truth = {plain_cell(row["file"]): plain_cell(row["label"])
                     for row in csv.DictReader(handle) if row.get("file") and row.get("label")}
    return PseudoPool(paths, truth)


@dataclass(frozen=True)
class TeacherCalibration:
    """The current model's temperature and in-domain features, fitted on a validation pass:
    what turns its logits into calibrated probabilities and finds unfamiliar pool images.

    The validation features themselves are the bank (the training features would take a pass
    of their own every epoch); the threshold comes from each validation image's distance to the
    others (its k+1-th neighbour: the first is itself)."""

    temperature: float
    bank: np.ndarray  # unit rows, float16
    neighbours: int
    threshold: float

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray, features: np.ndarray,
            familiar_share: float) -> TeacherCalibration:
        bank = normalized(features).astype(np.float16)
        neighbours = max(1, min(NEIGHBOURS, len(bank) - 1))
        inside = np.sort(knn_distance(features, bank, neighbours + 1))
        rank = min(len(inside), int(np.ceil(familiar_share * (len(inside) + 1))))
        return cls(fit_temperature(logits, labels), bank, neighbours,
                   float(inside[rank - 1]) if len(inside) > 1 else float("inf"))

    def judge(self, logits: torch.Tensor, features: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(labels, calibrated confidence, mask of the familiar rows) for a batch of outputs."""
        confidence, labels = (logits.float() / self.temperature).softmax(1).max(1)
        distance = torch.from_numpy(knn_distance(features.float().cpu().numpy(), self.bank,
                                                 self.neighbours)).to(logits.device)
        return labels, confidence, distance <= self.threshold


def pseudo_weight(weight: float, start: int, ramp: int, epoch: int) -> float:
    """Loss weight in (0-based) `epoch`: 0 before `start` (1-based), then a linear ramp."""
    done = epoch + 1 - start + 1
    if done <= 0:
        return 0.0
    return weight * min(1.0, done / ramp) if ramp else weight


def label_pool(logits: torch.Tensor, features: torch.Tensor, pool: PseudoPool,
               classes: list[str], threshold: float, teacher: TeacherCalibration
               ) -> tuple[list[tuple[int, int]], PseudoStats]:
    """Accepted (pool index, label) pairs from the pool's logits and features: row i is
    pool.paths[i]."""
    valid = ~logits.isnan().any(1)
    labels, confidence, familiar = teacher.judge(
        torch.where(valid[:, None], logits, torch.zeros_like(logits)),
        torch.where(valid[:, None], features, torch.zeros_like(features)))
    accepted = [(i, int(labels[i])) for i in range(len(pool.paths))
                if valid[i] and familiar[i] and confidence[i] >= threshold]
    named = [(pool.paths[i].name, y) for i, y in accepted]
    stats = _stats(len(pool.paths), named, pool, classes)
    stats.unfamiliar = int((valid & ~familiar).sum())
    return accepted, stats


def _stats(pool_size: int, accepted: list[tuple[str, int]], pool: PseudoPool,
           classes: list[str]) -> PseudoStats:
    known = [(name, y) for name, y in accepted if name in pool.truth]
    correct = sum(pool.truth[name] == classes[y] for name, y in known)
    per_class = Counter(classes[y] for _, y in accepted)
    return PseudoStats(pool_size, len(accepted), dict(per_class), correct, len(known))


class MixedSampler(Sampler[int]):
    """One epoch: the labelled draws of `labelled` plus every accepted pseudo-labelled index,
    shuffled together. The weighted sampler thus still balances the labelled part."""

    def __init__(self, labelled: Sampler[int] | None, n_labelled: int, n_pseudo: int,
                 generator: torch.Generator) -> None:
        self.labelled, self.n_labelled, self.n_pseudo = labelled, n_labelled, n_pseudo
        self.generator = generator

    def __len__(self) -> int:
        return (len(self.labelled) if self.labelled is not None else self.n_labelled) + \
            self.n_pseudo

    def __iter__(self) -> Iterator[int]:
        base = list(self.labelled) if self.labelled is not None else list(range(self.n_labelled))
        order = base + list(range(self.n_labelled, self.n_labelled + self.n_pseudo))
        perm = torch.randperm(len(order), generator=self.generator).tolist()
        return iter([order[i] for i in perm])


def masked_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FixMatch's unlabelled loss: cross-entropy on the confident images, averaged over all."""
    return (F.cross_entropy(logits.float(), labels, reduction="none") * mask).mean()


class TwoViews:
    """A weakly and a strongly augmented view of one image, stacked (FixMatch)."""

    def __init__(self, weak: Any, strong: Any) -> None:
        self.weak, self.strong = weak, strong

    def __call__(self, image: Any) -> torch.Tensor:
        return torch.stack([self.weak(image), self.strong(image)])


@dataclass(frozen=True)
class PseudoContext:
    """What a strategy needs from the trainer, and nothing more."""

    options: TrainOptions
    classes: list[str]
    labelled: list[tuple[Path, int]]  # the training samples
    data_config: dict[str, Any]
    generator: torch.Generator  # the epoch's generator: order and augmentation seeds
    workers: int
    dist: Distributed
    device: torch.device
    reporter: Reporter
    labelled_sampler: Sampler[int] | None  # --sampler weighted, or None (plain shuffling)


@dataclass(frozen=True)
class ValidationOutputs:
    """A validation pass's outputs over the whole val split (every rank's share)."""

    logits: np.ndarray
    labels: np.ndarray
    features: np.ndarray


class PseudoStrategy(Protocol):
    active: bool  # whether this epoch's batches carry pseudo-labels

    def needs_calibration(self, epoch: int) -> bool:
        """Whether `epoch` uses the pool before any validation pass was handed over: the
        trainer then validates first (pseudo-labels need a calibrated teacher)."""
        ...

    def after_validation(self, outputs: ValidationOutputs) -> None:
        """Take the latest validation pass: the teacher's calibration is refitted on it."""
        ...

    def begin_epoch(self, epoch: int) -> DataLoader | None:
        """Prepare `epoch`; the loader to train on, or None for the labelled loader."""
        ...

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             indices: torch.Tensor, loss_fn: nn.Module) -> LossResult:
        """(loss, logits, mask of the labelled rows) of one batch, pseudo-labels weighted in."""
        ...

    def columns(self) -> dict[str, float]:
        """This epoch's metrics.csv columns (zeros in epochs that do not use the pool)."""
        ...


class _PoolStrategy:
    """What both strategies share: the pool, the epoch's weight, and the teacher's calibration,
    which the trainer hands over after each validation pass (`after_validation`)."""

    def __init__(self, context: PseudoContext, pool: PseudoPool) -> None:
        self.context, self.pool = context, pool
        self.calibration: TeacherCalibration | None = None
        self.active, self.weight = False, 0.0

    def _weight_at(self, epoch: int) -> float:
        options = self.context.options
        return pseudo_weight(options.pseudo_weight, options.pseudo_start, options.pseudo_ramp,
                             epoch)

    def needs_calibration(self, epoch: int) -> bool:
        return self.calibration is None and self._weight_at(epoch) > 0

    def after_validation(self, outputs: ValidationOutputs) -> None:
        self.calibration = TeacherCalibration.fit(outputs.logits, outputs.labels,
                                                  outputs.features,
                                                  self.context.options.familiar_share)

    def _teacher(self) -> TeacherCalibration:
        if self.calibration is None:
            raise RuntimeError("the trainer validates before the first pseudo-labelled epoch")
        return self.calibration


class PerEpochPseudo(_PoolStrategy):
    """Before each epoch, the whole pool is labelled by the current (EMA) model with the
    evaluation preprocessing, and the confident images join that epoch's training set."""

    def __init__(self, context: PseudoContext, pool: PseudoPool,
                 labelled_cache: list[Any] | None, pool_cache: list[Any] | None,
                 teacher: nn.Module) -> None:
        """`teacher` is the model that labels the pool: the trainer's (EMA) model."""
        super().__init__(context, pool)
        self.teacher = teacher
        self.labelled_cache, self.pool_cache = labelled_cache, pool_cache
        self.stats: PseudoStats | None = None

    def begin_epoch(self, epoch: int) -> DataLoader | None:
        ctx, options = self.context, self.context.options
        self.weight = self._weight_at(epoch)
        self.active, self.stats = self.weight > 0, None
        if not self.active:
            return None
        accepted = self._label(self.teacher)
        samples = ctx.labelled + [(self.pool.paths[i], y) for i, y in accepted]
        cache = (self.labelled_cache + [self.pool_cache[i] for i, _ in accepted]
                 if self.labelled_cache is not None and self.pool_cache is not None else None)
        dataset = ImageDataset(samples, train_transform(ctx.data_config, options.aug), cache)
        sampler = shard(MixedSampler(ctx.labelled_sampler, len(ctx.labelled), len(accepted),
                                     ctx.generator), ctx.dist)
        return build_loader(dataset, options.batch_size, workers=ctx.workers,
                            generator=ctx.generator, sampler=sampler, drop_last=True)

    def _label(self, teacher: nn.Module) -> list[tuple[int, int]]:
        """Accepted (pool index, label) pairs; each rank labels its share, then all share."""
        ctx, paths = self.context, self.pool.paths
        runner = TorchRunner(FeatureClassifier(teacher), ctx.classes, ctx.data_config,
                             ctx.device, ctx.options.channels_last)
        mine = list(range(ctx.dist.rank, len(paths), ctx.dist.world))
        outputs = run_labelled(runner, [(paths[i], -1) for i in mine], ctx.options.batch_size,
                               ctx.workers, ctx.reporter, "pseudo-label pool",
                               spread_model=False)[0]
        logits = torch.full((len(paths), len(ctx.classes)), float("nan"))
        features = torch.full((len(paths), outputs["features"].shape[1]), float("nan"))
        logits[mine], features[mine] = (torch.from_numpy(outputs[k]) for k in ("logits",
                                                                               "features"))
        if ctx.dist.active:
            shares: list[Any] = [None] * ctx.dist.world
            torch.distributed.all_gather_object(shares, (mine, logits[mine], features[mine]))
            for indices, part, part_features in shares:
                logits[indices], features[indices] = part, part_features
        accepted, self.stats = label_pool(logits, features, self.pool, ctx.classes,
                                          ctx.options.pseudo_threshold,
                                          self._teacher())
        return accepted

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             indices: torch.Tensor, loss_fn: nn.Module) -> LossResult:
        logits = model(images)
        labelled = (indices < len(self.context.labelled)).to(labels.device)
        loss = (loss_fn(logits[labelled].float(), labels[labelled]) if labelled.any()
                else logits.sum() * 0)
        if not labelled.all():
            loss = loss + self.weight * loss_fn(logits[~labelled].float(), labels[~labelled])
        return loss, logits, labelled

    def columns(self) -> dict[str, float]:
        stats = self.stats or PseudoStats(len(self.pool.paths), 0, {}, 0, 0)
        return stats.row(self.context.classes, has_truth=bool(self.pool.truth))


class PerBatchPseudo(_PoolStrategy):
    """FixMatch: every step also draws an unlabelled batch, labels its weakly augmented view
    without gradients, and adds the weighted loss of the strongly augmented view on the
    confident ones."""

    def __init__(self, context: PseudoContext, pool: PseudoPool, labeller: nn.Module) -> None:
        super().__init__(context, pool)
        self.labeller = FeatureClassifier(labeller)
        self.unfamiliar: set[int] = set()
        self.unlabelled: Iterator[Any] = iter(())
        self.accepted: list[tuple[str, int]] = []
        self.seen: set[int] = set()

    def begin_epoch(self, epoch: int) -> DataLoader | None:
        ctx, options = self.context, self.context.options
        self.weight = self._weight_at(epoch)
        self.active, self.accepted, self.seen = self.weight > 0, [], set()
        self.unfamiliar = set()
        if not self.active:
            return None
        views = TwoViews(train_transform(ctx.data_config, "light", uint8=False),
                         train_transform(ctx.data_config, "strong", uint8=False))
        pool_set = ImageDataset([(p, -1) for p in self.pool.paths], views)
        loader = build_loader(pool_set, options.batch_size, workers=ctx.workers,
                              generator=ctx.generator, shuffle=True,
                              sampler=shard(RandomSampler(pool_set, generator=ctx.generator),
                                            ctx.dist) if ctx.dist.active else None,
                              drop_last=True)
        self.unlabelled = _cycle(loader)
        return None

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             indices: torch.Tensor, loss_fn: nn.Module) -> LossResult:
        """Labels the weak views first, then runs the labelled images and the strong views
        through the model in one forward pass (one backward, as DDP requires)."""
        ctx = self.context
        views, _, u_indices, _ = next(self.unlabelled)
        weak, strong = (to_device(views[:, k], ctx.device, ctx.options.channels_last)
                        for k in (0, 1))
        u_labels, u_mask = self._targets(weak, u_indices)
        logits = model(torch.cat([images, strong]))
        logits, u_logits = logits[: len(labels)], logits[len(labels):]
        loss = loss_fn(logits.float(), labels) + self.weight * masked_loss(u_logits, u_labels,
                                                                            u_mask)
        return loss, logits, torch.ones_like(labels, dtype=torch.bool)

    def _targets(self, weak: torch.Tensor, indices: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Label the weak views without gradients, in evaluation mode (the features are then
        comparable with the validation images'): (labels, mask of the confident, familiar
        ones)."""
        modes = [(module, module.training) for module in self.labeller.modules()]
        self.labeller.eval()
        try:
            with torch.no_grad():
                logits, features = self.labeller(weak)
        finally:
            for module, training in modes:
                module.training = training
        labels, confidence, familiar = self._teacher().judge(logits, features)
        mask = familiar & (confidence >= self.context.options.pseudo_threshold)
        self.unfamiliar.update(indices[~familiar.cpu()].tolist())
        self.seen.update(indices.tolist())
        for i in mask.nonzero().flatten().tolist():
            self.accepted.append((self.pool.paths[int(indices[i])].name, int(labels[i])))
        return labels, mask

    def columns(self) -> dict[str, float]:
        stats = _stats(len(self.pool.paths), self.accepted, self.pool, self.context.classes)
        stats.pool = len(self.seen) if self.active else len(self.pool.paths)
        stats.unfamiliar = len(self.unfamiliar)
        return stats.row(self.context.classes, has_truth=bool(self.pool.truth))


def _cycle(loader: DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


def read_manifests(paths: list[Path], classes: list[str], reporter: Reporter
                   ) -> list[tuple[Path, int]]:
    """(image, class) rows from manifests: `path,label`, and only rows with accepted=1 when
    the manifest has that column (as `wastecls pseudolabel` writes). Rows without a path or
    a label are skipped with their line number."""
    samples: list[tuple[Path, int]] = []
    for manifest in paths:
        try:
            with open(manifest, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"Cannot read manifest {manifest}: {exc}") from None
        if rows and not {"path", "label"} <= set(rows[0]):
            raise DataError(f"Manifest {manifest} needs 'path' and 'label' columns.")
        usable = []
        for line, row in enumerate(rows, start=2):  # line 1 is the header
            if row.get("accepted", "1") not in ("1", "true", "True"):
                continue  # rejected by pseudolabel, dropped in review
            if not row.get("path") or not row.get("label"):
                reporter.warn(f"skipped line {line} of {manifest}: no path or no label")
            else:
                usable.append((plain_cell(row["path"]), plain_cell(row["label"])))
        unknown = sorted({label for _, label in usable} - set(classes))
        if unknown:
            raise DataError(f"Manifest {manifest} has labels the training data does not: "
                            f"{', '.join(unknown)}.")
        for name, label in usable:
            path = Path(name)
            path = path if path.is_absolute() else manifest.parent / path
            samples.append((path, classes.index(label)))
    return samples
