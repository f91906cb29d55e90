"""Datasets and loaders: decode in worker processes, optional RAM cache, class-balanced sampling.

A corrupt image found while training is skipped, not fatal: the dataset yields a marker, the
collate function drops it and reports its index, and the trainer warns once per file.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import (
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    WeightedRandomSampler,
)

from waste_cli.core.console import Reporter
from waste_cli.core.errors import DataError
from waste_cli.core.processes import die_with_parent
from waste_cli.core.runtime import seed_everything
from waste_cli.data.sources import DECODE_ERRORS, load_rgb, resize_shorter

__all__ = [
    "ImageDataset",
    "SeededSampler",
    "ShardSampler",
    "TensorBatch",
    "build_loader",
    "cache_images",
    "collate_skipping_bad",
    "inverse_frequency",
    "weighted_sampler",
]

TensorBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]


def cache_images(
    paths: Sequence[Path], short_side: int, workers: int, reporter: Reporter
) -> list[np.ndarray | None]:
    """Decode every image once into uint8 arrays (None for unreadable files).

    Images are shrunk to `short_side` first: the model never sees more detail than that, and
    the cache stays small. Worker processes forked later share these arrays copy-on-write.
    """
    def decode(path: Path) -> np.ndarray | None:
        try:
            return np.asarray(resize_shorter(load_rgb(path, short_side), short_side,
                                             enlarge=False))
        except DECODE_ERRORS:
            return None

    cached: list[np.ndarray | None] = []
    with reporter.bar("cache images in RAM", len(paths)) as bar, ThreadPoolExecutor(
        max(1, workers)
    ) as pool:
        for array in pool.map(decode, paths):
            cached.append(array)
            bar.advance()
    total = sum(a.nbytes for a in cached if a is not None)
    reporter.info(f"cached {len(cached)} images in {total / 2**20:.0f} MiB")
    return cached


class ImageDataset(Dataset):
    """(image tensor, class index, sample index) for a list of (path, class index) samples."""

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        transform: Callable,
        cache: list[np.ndarray | None] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor | None, int, int]:
        """`key` is an index, or (index, seed) from `SeededSampler` for a random transform."""
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[int | tuple[int, int]]
                     ) -> list[tuple[torch.Tensor | None, int, int]]:
        """A batch's samples (the DataLoader asks for a batch at once): the global RNGs are
        saved and restored once per batch, not per image."""
        seeded = any(isinstance(key, tuple) for key in keys)
        with _rng_kept() if seeded else nullcontext():
            return [self._sample(*key) if isinstance(key, tuple) else self._sample(key)
                    for key in keys]

    def _sample(self, index: int, seed: int | None = None
                ) -> tuple[torch.Tensor | None, int, int]:
        path, label = self.samples[index]
        try:
            if self.cache is not None:
                array = self.cache[index]
                if array is None:
                    return None, label, index
                image = Image.fromarray(array)
            else:
                image = load_rgb(path)
        except DECODE_ERRORS:
            return None, label, index
        if seed is not None:
            seed_everything(seed, accelerators=False)
        return torch.as_tensor(self.transform(image)), label, index  # eval gives numpy arrays


@contextmanager
def _rng_kept() -> Iterator[None]:
    """Restore the global RNGs afterwards: in the training process they also drive dropout."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class SeededSampler(Sampler[tuple[int, int]]):
    """Pairs every index of `base` with a seed for its augmentation, drawn from `generator`.

    An image's augmentation then depends only on the generator's state when the epoch starts,
    not on which worker process draws it or on how long that worker has lived: persistent
    workers, any --workers count and a resumed run all see the same augmented images.
    """

    def __init__(self, base: Sampler[int] | Sequence[int], generator: torch.Generator) -> None:
        self.base, self.generator = base, generator

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seeds = torch.randint(0, 2**62, (len(self.base),), generator=self.generator).tolist()
        return zip(iter(self.base), seeds, strict=True)


def collate_skipping_bad(items: list[tuple[torch.Tensor | None, int, int]]) -> TensorBatch:
    """Stack the readable samples; return the indices of unreadable ones separately."""
    good = [item for item in items if item[0] is not None]
    bad = [item[2] for item in items if item[0] is None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0), bad
    images = _stack([item[0] for item in good])
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    indices = torch.tensor([item[2] for item in good], dtype=torch.long)
    return images, labels, indices, bad


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    """A batch of same-sized images, in the pixel layout they arrive in.

    Images converted from PIL are CHW views of HWC bytes; stacked into a channels_last batch
    they are copied as they lie, where a contiguous stack and the model's conversion to
    channels_last would transpose them twice."""
    first = images[0]
    if first.dim() != 3 or first.stride(0) != 1:
        return torch.stack(images)
    out = torch.empty((len(images), *first.shape), dtype=first.dtype,
                      memory_format=torch.channels_last)
    return torch.stack(images, out=out)


def inverse_frequency(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Per-class weights total / (classes x count): 1 for every class of a balanced set.

    The one formula behind both --sampler weighted (every class drawn equally often) and
    --class-weights (every class weighs the same in the loss)."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long),
                            minlength=num_classes).double()
    if (counts == 0).any():
        raise DataError("Class balancing needs at least one training image per class.")
    return counts.sum() / (num_classes * counts)


def build_loader(
    dataset: ImageDataset,
    batch_size: int,
    *,
    workers: int,
    generator: torch.Generator | None = None,
    shuffle: bool = False,
    sampler: Sampler | None = None,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose order and augmentations depend only on `generator`'s seed.

    With a generator (training), every sample carries its own augmentation seed. Workers are
    persistent: forking a new one every epoch makes the training process pay copy-on-write
    page faults on its own memory for the next seconds. `drop_last` drops a partial last batch
    only when a full one remains: the count is what this loader yields (a torchrun rank's
    share), so a small dataset still gives every rank a step.
    """
    drop_last = drop_last and len(sampler if sampler is not None else dataset) > batch_size
    if generator is not None:
        if sampler is None:
            sampler = (RandomSampler(dataset, generator=generator) if shuffle
                       else SequentialSampler(dataset))
        sampler = SeededSampler(sampler, generator)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skipping_bad,
        drop_last=drop_last,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
        persistent_workers=workers > 0,
        worker_init_fn=partial(_start_loader_worker, os.getpid()) if workers else None,
    )


def _start_loader_worker(parent: int, worker_id: int) -> None:
    die_with_parent(parent)


def weighted_sampler(labels: Sequence[int], num_classes: int,
                     generator: torch.Generator) -> WeightedRandomSampler:
    """Inverse-frequency sampling with replacement, one epoch = as many draws as images."""
    weights = inverse_frequency(labels, num_classes)[torch.as_tensor(list(labels))]
    return WeightedRandomSampler(weights, len(weights), replacement=True, generator=generator)


class ShardSampler(Sampler[int]):
    """Rank `rank` of `world` takes every world-th index of `base`.

    `base` must give the same order on every rank (same generator seed), so the shards are
    disjoint and together cover the epoch. With `even`, every rank gets the same count (DDP
    needs the same number of steps everywhere); without it nothing is dropped (for evaluation).
    """

    def __init__(self, base: Sampler[int] | Sequence[int], rank: int, world: int,
                 even: bool = True) -> None:
        self.base, self.rank, self.world, self.even = base, rank, world, even

    def __len__(self) -> int:
        total = len(self.base)
        if self.even:
            return total // self.world
        return len(range(self.rank, total, self.world))

    def __iter__(self):
        order = list(self.base)
        if self.even:
            order = order[: len(order) - len(order) % self.world]
        return iter(order[self.rank :: self.world])
