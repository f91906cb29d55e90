"""The training run's data: the prepared splits, extra labels and unlabelled images, checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from waste_cli.core.console import Reporter
from waste_cli.core.errors import DataError
from waste_cli.data.scan import (
    dataset_classes,
    labeled_samples,
)
from waste_cli.data.split import split_groups
from waste_cli.options import TrainOptions
from waste_cli.train.self_training import (
    read_manifests,
)

__all__ = ["Samples", "TrainData", "load_train_data"]

Samples = list[tuple[Path, int]]  # (image, class index)

@dataclass
class TrainData:
    classes: list[str]
    train: Samples
    val: Samples


def _refuse_held_out(extra: list[tuple[Path, int]], root: Path) -> None:
    """--extra-labels may not bring validation or test images into training."""
    held_out = [(root / split).resolve() for split in ("val", "test")]
    leaked = [path for path, _ in extra
              if any(path.resolve().is_relative_to(folder) for folder in held_out)]
    if leaked:
        raise DataError(f"--extra-labels lists {len(leaked)} image(s) of {root}'s val or test "
                        f"split (e.g. {leaked[0]}): training on them would make those numbers "
                        "meaningless. Label images from elsewhere, e.g. ROOT/pseudolabel.")


def load_train_data(options: TrainOptions, reporter: Reporter) -> TrainData:
    """Training and validation samples; val is ROOT/val or a seeded share of train."""
    root = options.data
    if root is None or not (root / "train").is_dir():
        raise DataError(
            f"{root} has no train/ folder. Point --data at a folder made by `wastecls prepare` "
            "(ROOT/train/<class>/, ROOT/val/<class>/)."
        )
    classes = dataset_classes(root)
    if len(classes) < 2:
        raise DataError(f"{root} has {len(classes)} class ({', '.join(classes)}): a classifier "
                        "needs at least two. Add class folders, or prepare the data again.")
    train = labeled_samples(root / "train", classes)
    extra = read_manifests(options.extra_labels, classes, reporter)
    _refuse_held_out(extra, root)
    train += extra
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
        split = split_groups(keys, {"val": options.val_frac}, options.seed)
        val = [s for s in train if split[str(s[0])] == "val"]
        train = [s for s in train if split[str(s[0])] == "train"]
    if not val:
        raise DataError(f"No validation images in {root}; add ROOT/val or raise --val-frac.")
    return TrainData(classes, train, val)
