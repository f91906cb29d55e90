"""Pseudo-labelling: per-epoch self-training (Lee 2013) and per-batch FixMatch-style training.

Labels are always attached to images by dataset index, never by position in a shuffled batch
(the seed project's bug). Validation and test images are never in the pool. When `prepare
--unlabeled-frac` recorded the hidden truth (pseudolabel_truth.csv), precision is measured.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Sampler

from waste_cli.console import Reporter
from waste_cli.data.scan import list_images
from waste_cli.errors import ConfigError, DataError
from waste_cli.fileio import atomic_write_text
from waste_cli.settings import PredictSettings, PseudolabelSettings

__all__ = [
    "FixMatchState",
    "MixedSampler",
    "PseudoPool",
    "PseudoStats",
    "PseudolabelResult",
    "TwoViews",
    "fixmatch_targets",
    "label_pool",
    "load_pool",
    "masked_loss",
    "pseudo_weight",
    "pseudolabel",
    "read_manifests",
]

TRUTH_CSV = "pseudolabel_truth.csv"


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

    def row(self, classes: list[str], has_truth: bool) -> dict[str, float]:
        row: dict[str, float] = {"pseudo_pool": self.pool, "pseudo_accepted": self.accepted}
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
            truth = {row["file"]: row["label"] for row in csv.DictReader(handle)}
    return PseudoPool(paths, truth)


def pseudo_weight(weight: float, start: int, ramp: int, epoch: int) -> float:
    """Loss weight in (0-based) `epoch`: 0 before `start` (1-based), then a linear ramp."""
    done = epoch + 1 - start + 1
    if done <= 0:
        return 0.0
    return weight * min(1.0, done / ramp) if ramp else weight


def label_pool(logits: torch.Tensor, pool: PseudoPool, classes: list[str],
               threshold: float) -> tuple[list[tuple[int, int]], PseudoStats]:
    """Accepted (pool index, label) pairs from the pool's logits: row i is pool.paths[i]."""
    valid = ~logits.isnan().any(1)
    probs = torch.where(valid[:, None], logits, torch.zeros_like(logits)).softmax(1)
    confidence, labels = probs.max(1)
    accepted = [(i, int(labels[i])) for i in range(len(pool.paths))
                if valid[i] and confidence[i] >= threshold]
    named = [(pool.paths[i].name, y) for i, y in accepted]
    return accepted, _stats(len(pool.paths), named, pool, classes)


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


class FixMatchState:
    """Per-epoch counters of the per-batch mode."""

    def __init__(self, pool: PseudoPool, classes: list[str]) -> None:
        self.pool, self.classes = pool, classes
        self.accepted: list[tuple[str, int]] = []
        self.seen: set[int] = set()

    def stats(self) -> PseudoStats:
        stats = _stats(len(self.pool.paths), self.accepted, self.pool, self.classes)
        stats.pool = len(self.seen)
        return stats


class TwoViews:
    """A weakly and a strongly augmented view of one image, stacked (FixMatch)."""

    def __init__(self, weak: Any, strong: Any) -> None:
        self.weak, self.strong = weak, strong

    def __call__(self, image: Any) -> torch.Tensor:
        return torch.stack([self.weak(image), self.strong(image)])


def fixmatch_targets(model: nn.Module, weak: torch.Tensor, indices: torch.Tensor,
                     threshold: float, state: FixMatchState) -> tuple[torch.Tensor, torch.Tensor]:
    """Label the weak views without gradients: (labels, mask of the confident ones)."""
    with torch.no_grad():
        confidence, labels = model(weak).float().softmax(1).max(1)
    mask = confidence >= threshold
    state.seen.update(indices.tolist())
    for i in mask.nonzero().flatten().tolist():
        state.accepted.append((state.pool.paths[int(indices[i])].name, int(labels[i])))
    return labels, mask


def masked_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FixMatch's unlabelled loss: cross-entropy on the confident images, averaged over all."""
    return (F.cross_entropy(logits.float(), labels, reduction="none") * mask).mean()


def read_manifests(paths: list[Path], classes: list[str]) -> list[tuple[Path, int]]:
    """(image, class) rows from manifests: `path,label`, and only rows with accepted=1 when
    the manifest has that column (as `wastecls pseudolabel` writes)."""
    samples: list[tuple[Path, int]] = []
    for manifest in paths:
        try:
            with open(manifest, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"Cannot read manifest {manifest}: {exc}") from None
        if rows and not {"path", "label"} <= set(rows[0]):
            raise DataError(f"Manifest {manifest} needs 'path' and 'label' columns.")
        unknown = sorted({r["label"] for r in rows} - set(classes))
        if unknown:
            raise DataError(f"Manifest {manifest} has labels the training data does not: "
                            f"{', '.join(unknown)}.")
        for row in rows:
            if row.get("accepted", "1") in ("1", "true", "True"):
                path = Path(row["path"])
                path = path if path.is_absolute() else manifest.parent / path
                samples.append((path, classes.index(row["label"])))
    return samples



# --- `wastecls pseudolabel` ----------------------------------------------------------------

@dataclass
class PseudolabelResult:
    manifest: Path
    model: Path
    images: int
    accepted: dict[str, list[float]]  # class -> confidences of the accepted images
    failed: list[Any]


def _default_pool(model_path: Path) -> Path:
    from waste_cli.models import load_checkpoint

    if model_path.suffix.lower() == ".pt":
        data = load_checkpoint(model_path).get("settings", {}).get("data")
        if data and (Path(data) / "pseudolabel").is_dir():
            return Path(data) / "pseudolabel"
    raise ConfigError("Say which folder to label with --data DIR (the model's training data "
                      "has no pseudolabel/ folder).")


def pseudolabel(settings: PseudolabelSettings, reporter: Reporter | None = None
                ) -> PseudolabelResult:
    """Label an unlabelled folder: a manifest of every image, and accepted copies if asked."""
    from waste_cli.backends import find_model, load_runner
    from waste_cli.predict import expand_inputs, predict_stream

    reporter = reporter or Reporter(settings.quiet)
    model_path = find_model(settings.model, reporter)
    folder = settings.data or _default_pool(model_path)
    runner = load_runner(model_path, settings.device, settings.backend, reporter)
    paths, failed = expand_inputs([str(folder)])
    options = PredictSettings(inputs=[str(folder)], top_k=2, workers=settings.workers,
                              batch_size=settings.batch_size,
                              exclude_class=settings.exclude_class, quiet=True)
    accepted: dict[str, list[float]] = defaultdict(list)
    rows, names = [["path", "label", "confidence", "margin", "accepted"]], set()
    for item in predict_stream(runner, paths, options, reporter):
        if item.error:
            failed.append(item)
            continue
        confidence = item.probs[0]
        margin = confidence - (item.probs[1] if len(item.probs) > 1 else 0.0)
        ok = confidence >= settings.threshold
        rows.append([str(item.path.resolve()), item.labels[0], f"{confidence:.6f}",
                     f"{margin:.6f}", "1" if ok else "0"])
        if ok:
            accepted[item.labels[0]].append(confidence)
            if settings.copy_to is not None:
                target = settings.copy_to / item.labels[0] / item.path.name
                if target in names or target.exists():
                    target = target.with_stem(f"{target.stem}-{len(names)}")
                names.add(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(item.path, target)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    atomic_write_text(settings.out, buffer.getvalue())
    return PseudolabelResult(settings.out, model_path, len(rows) - 1, dict(accepted), failed)
