"""What preprocessing one photo costs, on one core: why end to end cannot reach model-only speed.

Times, per image over the first 300 photos: reading the file, decoding it (PIL with EXIF
orientation, as `predict` does), and the model's evaluation transform on the decoded image.
Usage: python bench/bench_decode.py --data ../shared/data/trashnet [--size 224]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import add_data_arguments

from waste_cli.data.scan import list_images
from waste_cli.data.sources import load_rgb, open_image
from waste_cli.data.transforms import eval_transform


def per_image_ms(step: Callable, items: list) -> float:
    start = time.perf_counter()
    for item in items:
        step(item)
    return (time.perf_counter() - start) / len(items) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_data_arguments(parser)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = list_images(args.data)[:300]
    transform = eval_transform({"input_size": [3, args.size, args.size],
                                "interpolation": "bicubic", "mean": [0.5] * 3,
                                "std": [0.5] * 3, "crop_pct": 0.875, "crop_mode": "center"})
    blobs = [p.read_bytes() for p in paths]
    decoded = [load_rgb(p) for p in paths]
    rows = {"read file": per_image_ms(Path.read_bytes, paths),
            "decode (PIL, EXIF orientation)": per_image_ms(open_image, blobs),
            "resize, crop, normalise": per_image_ms(transform, decoded),
            "all of it": per_image_ms(lambda p: transform(load_rgb(p)), paths)}
    print(f"{len(paths)} photos of {args.data}, typical size {decoded[0].size}, "
          f"{args.size} px model input, 1 thread\n\n| step | ms per image |\n|---|---|")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.2f} |")


if __name__ == "__main__":
    main()
