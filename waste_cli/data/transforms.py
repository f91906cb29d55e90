"""Preprocessing, decided once at train time from timm's data config and stored with the model.

`data_config` is the single source of truth for input size, mean/std, interpolation and crop:
train writes it into the checkpoint, and evaluate, predict and export read it back from there.
"""

from __future__ import annotations

from typing import Any, Literal

from timm.data import create_transform, resolve_model_data_config
from torch import nn

__all__ = ["AUGMENTATIONS", "data_config", "eval_transform", "train_transform"]

Augment = Literal["none", "light", "strong"]
# Random resized crop, flips both ways, colour, and for `strong` RandAugment (rotate, shear,
# translate, brightness, contrast, ...) plus random erasing: the seed project's augmentations.
AUGMENTATIONS: dict[str, dict[str, Any]] = {
    "light": {"scale": (0.5, 1.0), "hflip": 0.5, "vflip": 0.5,
              "color_jitter": (0.2, 0.2, 0.0)},  # brightness, contrast (saturation is costly)
    "strong": {"scale": (0.3, 1.0), "hflip": 0.5, "vflip": 0.5, "color_jitter": 0.3,
               "auto_augment": "rand-m7-mstd0.5-inc1", "re_prob": 0.25},
}


def data_config(model: nn.Module, img_size: int | None = None) -> dict[str, Any]:
    """timm's preprocessing for `model` as plain data, with an optional square input size."""
    config = resolve_model_data_config(model)
    if img_size:
        config["input_size"] = (3, img_size, img_size)
    return {
        "input_size": list(config["input_size"]),
        "interpolation": config["interpolation"],
        "mean": [float(v) for v in config["mean"]],
        "std": [float(v) for v in config["std"]],
        "crop_pct": float(config["crop_pct"]),
        "crop_mode": config.get("crop_mode", "center"),
    }


def eval_transform(config: dict[str, Any]):
    """Resize, centre crop and normalise exactly as timm evaluates the model."""
    return create_transform(
        input_size=tuple(config["input_size"]), is_training=False,
        interpolation=config["interpolation"], mean=tuple(config["mean"]),
        std=tuple(config["std"]), crop_pct=config["crop_pct"], crop_mode=config["crop_mode"],
    )


def train_transform(config: dict[str, Any], augment: Augment):
    """The training pipeline for an augmentation level; `none` is the eval pipeline."""
    if augment == "none":
        return eval_transform(config)
    return create_transform(
        input_size=tuple(config["input_size"]), is_training=True,
        interpolation=config["interpolation"], mean=tuple(config["mean"]),
        std=tuple(config["std"]), **AUGMENTATIONS[augment],
    )
