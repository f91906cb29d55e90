"""Batched inference over a loader: the one forward loop shared by validate, evaluate, predict."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader

from waste_cli.console import Reporter
from waste_cli.data.loading import ImageDataset, build_loader
from waste_cli.data.transforms import eval_transform
from waste_cli.runtime import autocast

if TYPE_CHECKING:
    from waste_cli.backends import Runner

__all__ = ["iterate_logits", "run_labelled", "to_device"]


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


def run_labelled(
    runner: Runner, samples: list[tuple[Path, int]], batch_size: int, workers: int,
    reporter: Reporter, description: str,
) -> tuple[torch.Tensor, list[int]]:
    """Logits for every sample (NaN rows for unreadable images) and the unreadable indices."""
    dataset = ImageDataset(samples, eval_transform(runner.data_config))
    loader = build_loader(dataset, batch_size, workers=workers)
    logits = torch.full((len(samples), len(runner.classes)), float("nan"))
    bad: list[int] = []
    with reporter.bar(description, len(samples)) as bar:
        for images, _, indices, unreadable in loader:
            bad += unreadable
            if len(indices):
                logits[indices] = runner(images)
            bar.advance(len(indices) + len(unreadable))
    return logits, bad
