"""Batched inference: the forward loops of validation, evaluate, predict and pseudo-labelling.

Two ways to spread the work over a machine:

- model in this process, decoding in loader workers (GPUs, and training, whose process must not
  be forked again);
- on a CPU, whole batches in worker processes: each decodes, preprocesses *and* runs its own
  batches with one thread. Decoding then never competes with the model's threads for the same
  cores, and a small model scales better over processes than over threads (BENCHMARKS.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from waste_cli.console import Reporter
from waste_cli.data.loading import (
    Batch,
    ImageDataset,
    build_loader,
    collate_skipping_bad,
    default_workers,
)
from waste_cli.data.transforms import eval_transform
from waste_cli.runtime import autocast

if TYPE_CHECKING:
    from waste_cli.backends import Runner

__all__ = ["iterate_batches", "iterate_logits", "plan_workers", "run_labelled", "to_device"]

MAX_PROCESSES = 8  # each holds a copy of the model


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Move a batch to `device` in the memory format the model was set up with."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return images.to(device, non_blocking=True, memory_format=fmt)


@torch.inference_mode()
def iterate_logits(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]]:
    """Yield (float32 logits on CPU, labels, sample indices, unreadable indices) per batch."""
    model.eval()
    for images, labels, indices, bad in loader:
        if not len(labels):
            yield torch.empty(0), labels, indices, bad
            continue
        with autocast(device, amp):
            logits = model(to_device(images, device, channels_last))
        yield logits.float().cpu(), labels, indices, bad


def plan_workers(runner: Runner, workers: int | None, images: int, batch_size: int,
                 spread_model: bool = True) -> tuple[int, bool]:
    """(worker processes, whether they run the model too) for `images` inputs.

    On a CPU, `workers` processes each decode and infer (default: one per core, at most
    eight; a single batch runs here, where the model is already loaded); elsewhere, or without
    `spread_model`, they only decode (default: all cores but one). 0 always means everything in
    this process.
    """
    if runner.on_cpu and spread_model:
        batches = math.ceil(images / batch_size)
        wanted = min(os.cpu_count() or 1, MAX_PROCESSES) if workers is None else workers
        count = min(wanted, batches) if batches > 1 or workers is not None else 0
        return count, count > 0
    wanted = default_workers() if workers is None else workers
    return min(wanted, max(1, images // 8)), False


class _InferredBatches(Dataset):
    """Index = a list of sample indices; item = that batch decoded, preprocessed and inferred."""

    def __init__(self, images: ImageDataset, runner: Runner) -> None:
        self.images, self.runner = images, runner

    def __getitem__(self, batch: list[int]) -> Batch:
        images, labels, indices, bad = collate_skipping_bad([self.images[i] for i in batch])
        return (self.runner(images) if len(indices) else torch.empty(0)), labels, indices, bad


def _unchanged(item: Batch) -> Batch:
    return item


def _set_threads(threads: int, _worker_id: int) -> None:
    torch.set_num_threads(threads)


def iterate_batches(
    runner: Runner, samples: list[tuple[Path, int]], batch_size: int, workers: int | None,
    *, spread_model: bool = True,
) -> Iterator[Batch]:
    """Yield (logits, labels, sample indices, unreadable indices) per batch, in sample order.

    `spread_model=False` keeps the model in this process whatever the device (training: a
    fork of its large process makes its next steps pay copy-on-write faults)."""
    dataset = ImageDataset(samples, eval_transform(runner.data_config))
    count, in_workers = plan_workers(runner, workers, len(samples), batch_size, spread_model)
    if not in_workers:
        for images, labels, indices, bad in build_loader(dataset, batch_size, workers=count):
            yield (runner(images) if len(indices) else torch.empty(0)), labels, indices, bad
        return
    threads = max(1, (os.cpu_count() or 1) // count)
    batches = BatchSampler(SequentialSampler(dataset), batch_size, drop_last=False)
    yield from DataLoader(_InferredBatches(dataset, runner.for_worker(threads)), batch_size=None,
                          sampler=batches, num_workers=count, collate_fn=_unchanged,
                          worker_init_fn=partial(_set_threads, threads), prefetch_factor=2)


def run_labelled(
    runner: Runner, samples: list[tuple[Path, int]], batch_size: int, workers: int | None,
    reporter: Reporter, description: str, *, spread_model: bool = True,
) -> tuple[torch.Tensor, list[int]]:
    """Logits for every sample (NaN rows for unreadable images) and the unreadable indices."""
    logits = torch.full((len(samples), len(runner.classes)), float("nan"))
    bad: list[int] = []
    with reporter.bar(description, len(samples)) as bar:
        for batch_logits, _, indices, unreadable in iterate_batches(
                runner, samples, batch_size, workers, spread_model=spread_model):
            bad += unreadable
            if len(indices):
                logits[indices] = batch_logits
            bar.advance(len(indices) + len(unreadable))
    return logits, bad
