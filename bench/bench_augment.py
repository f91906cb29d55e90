"""Cost per image of `--aug light` from a RAM cache, the part of a CPU training step that is not
the model (issue 3's throughput target; BENCHMARKS.md run 12).

Two pipelines on the same cached images, alternating in one process, best of `--rounds`:
  per-image  as before run 12: bicubic crop, flips and PIL colour jitter per image, the RNGs
             saved and restored per image, a contiguous stack converted to channels_last, then
             normalised (what timm's create_transform and a default collate give)
  batch      `wastecls train` now: bilinear crop and flips per image, RNGs kept once per batch,
             the batch stacked channels_last, then `BatchFinish` (brightness, contrast and
             normalisation on the batch)
and the share of each stage of the `batch` pipeline. Usage:
    python bench/bench_augment.py [--data ../shared/data/trashnet] [--images 256] [--size 288]
"""

from __future__ import annotations

import argparse
import math
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from common import add_data_arguments
from PIL import Image
from timm.data import create_transform
from torchvision.transforms.functional import normalize

from waste_cli.console import Reporter
from waste_cli.data.loading import (
    ImageDataset,
    _rng_kept,
    _seed_all,
    build_loader,
    cache_images,
)
from waste_cli.data.scan import list_images
from waste_cli.data.transforms import AUGMENTATIONS, BatchFinish, train_transform

# tf_efficientnet_lite0's data config at the bench recipe's input size.
CONFIG = {"interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.875,
          "crop_mode": "center"}


def per_image_epoch(cache: list[np.ndarray], config: dict, batch: int, seed: int) -> float:
    """Seconds for one pass of the pipeline before run 12."""
    transform = create_transform(
        input_size=tuple(config["input_size"]), is_training=True,
        interpolation=config["interpolation"], mean=tuple(config["mean"]),
        std=tuple(config["std"]), normalize=False, **AUGMENTATIONS["light"])
    mean = [255 * m for m in config["mean"]]
    std = [255 * s for s in config["std"]]
    order = torch.randperm(len(cache), generator=torch.Generator().manual_seed(seed)).tolist()
    start = time.perf_counter()
    for first in range(0, len(order), batch):
        images = []
        for index in order[first : first + batch]:
            with _rng_kept():
                _seed_all(seed * 100_003 + index)
                images.append(transform(Image.fromarray(cache[index])))
        stacked = torch.stack(images).contiguous(memory_format=torch.channels_last)
        normalize(stacked.float(), mean, std, inplace=True)
    return time.perf_counter() - start


def batch_epoch(cache: list[np.ndarray], config: dict, batch: int, seed: int,
                stages: dict[str, float] | None = None) -> float:
    """Seconds for one pass of `wastecls train`'s pipeline; `stages` gets its split."""
    dataset = ImageDataset([(Path(f"{i}.jpg"), 0) for i in range(len(cache))],
                           train_transform(config, "light"), cache)
    generator = torch.Generator().manual_seed(seed)
    loader = build_loader(dataset, batch, workers=0, generator=generator, shuffle=True)
    finish, lighting = BatchFinish(config, "light"), torch.Generator().manual_seed(seed)
    loading = finishing = 0.0
    start = time.perf_counter()
    batches = iter(loader)
    while True:
        ready = time.perf_counter()
        item = next(batches, None)
        loading += time.perf_counter() - ready
        if item is None:
            break
        ready = time.perf_counter()
        finish(item[0], lighting)
        finishing += time.perf_counter() - ready
    if stages is not None:
        stages["crop, flips, stack (loader)"] = loading
        stages["brightness, contrast, normalise (BatchFinish)"] = finishing
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=288)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = CONFIG | {"input_size": [3, args.size, args.size]}
    paths = list_images(args.data)
    paths = [paths[i] for i in np.linspace(0, len(paths) - 1, args.images).astype(int)]
    short = math.ceil(args.size / config["crop_pct"])  # as `train --cache ram`
    cache = cache_images(paths, short, 2, Reporter(quiet=True))
    best = {"per-image": math.inf, "batch": math.inf}
    stages: dict[str, float] = {}
    for round_ in range(args.rounds):
        best["per-image"] = min(best["per-image"],
                                per_image_epoch(cache, config, args.batch_size, round_))
        split: dict[str, float] = {}
        seconds = batch_epoch(cache, config, args.batch_size, round_, split)
        if seconds < best["batch"]:
            best["batch"], stages = seconds, split
    ms = {name: 1000 * seconds / len(cache) for name, seconds in best.items()}
    print(f"# augmentation benchmark, {date.today()}, {args.images} images from {args.data}, "
          f"{args.size} px, batch {args.batch_size}, best of {args.rounds} rounds, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)\n")
    print("| pipeline | ms per image |\n|---|---|")
    for name, value in ms.items():
        print(f"| {name} | {value:.2f} |")
    print(f"\nbatch is {ms['per-image'] / ms['batch']:.2f}x cheaper per image. Its stages:\n")
    print("| stage | ms per image |\n|---|---|")
    for name, seconds in stages.items():
        print(f"| {name} | {1000 * seconds / len(cache):.2f} |")


if __name__ == "__main__":
    main()
