"""Batched inference over a loader: the one forward loop shared by validate, evaluate, predict."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from waste_cli.runtime import autocast

__all__ = ["iterate_logits", "to_device"]


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
