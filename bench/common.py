"""Arguments shared by the benchmark scripts: where the real data and weights are."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--data (TrashNet-style class folders) and --weights (local pretrained weights)."""
    parser.add_argument("--data", type=Path, default=Path("../shared/data/trashnet"))
    parser.add_argument("--weights", type=Path,
                        default=Path("../shared/weights/tf_efficientnet_lite0.in1k.safetensors"))
