"""Preprocessing, decided once at train time from timm's data config and stored with the model.

`data_config` is the single source of truth for input size, mean/std, interpolation and crop:
train writes it into the checkpoint, and evaluate, predict and export read it back from there.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "AUGMENTATIONS", "BatchFinish", "CenterCropEval", "data_config", "eval_transform",
    "light_and_normalize", "train_transform",
]

Augment = Literal["none", "light", "strong"]
# Random resized crop, flips both ways, colour, and for `strong` RandAugment (rotate, shear,
# translate, brightness, contrast, ...) plus random erasing.
AUGMENTATIONS: dict[str, dict[str, Any]] = {
    "light": {"scale": (0.5, 1.0), "hflip": 0.5, "vflip": 0.5,
              "color_jitter": (0.2, 0.2, 0.0)},  # brightness, contrast; saturation is costly
    # (timm leaves colour jitter out when RandAugment is on: it has its own colour operations)
    "strong": {"scale": (0.3, 1.0), "hflip": 0.5, "vflip": 0.5,
               "auto_augment": "rand-m7-mstd0.5-inc1", "re_prob": 0.25},
}


def data_config(model: nn.Module, img_size: int | None = None) -> dict[str, Any]:
    """timm's preprocessing for `model` as plain data, with an optional square input size."""
    from timm.data import resolve_model_data_config

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


# The longest side, in shorter sides, of a picture the evaluation resize accepts: the centre
# crop sees 1/64 of such a strip, and the resize's memory grows with the ratio (a 2x4000 px
# strip would take 620 MiB), so longer ones are refused rather than risk a worker's memory.
MAX_ELONGATION = 64

_PIL_FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
                "hamming": Image.Resampling.HAMMING, "box": Image.Resampling.BOX}


class CenterCropEval:
    """timm's evaluation transform for a square, centre-cropped input, without importing timm.

    Resize the short side to floor(size / crop_pct) with the model's filter, crop the centre,
    scale to [0, 1] and normalise, with the same PIL operations and float32 arithmetic as timm
    and torchvision, so the output is identical (tested), as a float32 CHW numpy array. It
    exists because importing torch and timm costs 1.5-2 s, most of a `predict` run on an ONNX
    model, which needs neither.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.size = config["input_size"][-1]
        self.scale = math.floor(self.size / config["crop_pct"])
        self.filter = _PIL_FILTERS[config["interpolation"]]
        self.mean = np.asarray(config["mean"], dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(config["std"], dtype=np.float32).reshape(-1, 1, 1)

    @staticmethod
    def handles(config: dict[str, Any]) -> bool:
        _, height, width = config["input_size"]
        return (config.get("crop_mode", "center") == "center" and height == width
                and config["crop_pct"] <= 1 and config["interpolation"] in _PIL_FILTERS)

    def __call__(self, image: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        """The model's input for `image`, written into `out` when given (a batch's row)."""
        width, height = image.size
        short, long = sorted(image.size)
        resized_long = int(self.scale * long / short)  # torchvision's rounding
        if resized_long > MAX_ELONGATION * self.scale:
            raise ValueError(f"too elongated for the model's centred square ({width}x{height}, "
                             f"more than {MAX_ELONGATION}:1): resizing it would take "
                             f"{resized_long * self.scale * 3 / 2**20:,.0f} MiB")
        size = (self.scale, resized_long) if width <= height else (resized_long, self.scale)
        if size != image.size:
            image = image.resize(size, self.filter)
        left = round((size[0] - self.size) / 2.0)  # torchvision CenterCrop
        top = round((size[1] - self.size) / 2.0)
        crop = np.asarray(image, dtype=np.uint8)[top : top + self.size, left : left + self.size]
        # Reorder the bytes before converting: float conversion of a strided view is much slower.
        pixels = np.ascontiguousarray(crop.transpose(2, 0, 1))
        out = np.divide(pixels, np.float32(255), out=out, dtype=np.float32)
        np.subtract(out, self.mean, out=out)
        return np.divide(out, self.std, out=out)


class _TimmEval:
    """timm's own evaluation transform (other crop modes), with a numpy array as output."""

    def __init__(self, config: dict[str, Any]) -> None:
        from timm.data import create_transform

        self.transform = create_transform(
            input_size=tuple(config["input_size"]), is_training=False,
            interpolation=config["interpolation"], mean=tuple(config["mean"]),
            std=tuple(config["std"]), crop_pct=config["crop_pct"], crop_mode=config["crop_mode"],
        )

    def __call__(self, image: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        result = self.transform(image).numpy()
        if out is None:
            return result
        out[...] = result
        return out


def eval_transform(config: dict[str, Any]) -> CenterCropEval | _TimmEval:
    """Resize, centre crop and normalise exactly as timm evaluates the model: PIL image in,
    float32 CHW numpy array out."""
    return CenterCropEval(config) if CenterCropEval.handles(config) else _TimmEval(config)


def train_transform(config: dict[str, Any], augment: Augment, *, uint8: bool = True):
    """The per-image training pipeline for an augmentation level; `none` is the eval pipeline.

    Crops are resized bilinearly, as torchvision's and Ultralytics' training pipelines do (the
    model's own interpolation, often bicubic, stays for evaluation): bicubic costs more per
    image, on the same cores as the model when training on a CPU.

    With `uint8` the images stay uint8 CHW tensors, and `BatchFinish` does the rest a batch at
    a time in the training loop (brightness and contrast, normalisation, random erasing), as
    timm's prefetcher normalises and erases and fastai applies its lighting transforms to the
    batch: per image, those steps are a large share of the augmentation's cost. Without it (the
    views of FixMatch) the pipeline ends in normalised floats.
    """
    if augment == "none":
        return eval_transform(config)
    from timm.data import create_transform

    options = dict(AUGMENTATIONS[augment])
    on_batch = uint8
    if on_batch:  # left to BatchFinish
        options["color_jitter"], options["re_prob"] = None, 0.0
    return create_transform(
        input_size=tuple(config["input_size"]), is_training=True, interpolation="bilinear",
        mean=tuple(config["mean"]), std=tuple(config["std"]), normalize=not on_batch, **options,
    )


# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale (and PIL's "L" conversion) use.
_LUMA = (0.2989, 0.587, 0.114)


class BatchFinish:
    """The end of the training pipeline for a whole batch, in the training loop.

    A uint8 batch from `train_transform` gets random brightness and contrast per image, the
    model's normalisation, then timm's random erasing, each as the level asks. Brightness b and
    contrast c map a pixel x to b*(c*x + (1-c)*gray), gray being the image's mean luma, clamped
    to [0, 255]: torchvision's adjust_brightness and adjust_contrast in either order, except
    that they also clamp in between. A float batch (FixMatch views, no augmentation) is
    already the model's input.
    """

    def __init__(self, config: dict[str, Any], augment: Augment) -> None:
        import torch

        options = AUGMENTATIONS.get(augment, {})
        brightness, contrast = (options.get("color_jitter") or (0, 0))[:2]
        self.spread = torch.tensor([brightness, contrast], dtype=torch.float32)
        self.mean = torch.tensor(config["mean"], dtype=torch.float32) * 255
        self.std = torch.tensor(config["std"], dtype=torch.float32) * 255
        self.erase_prob = float(options.get("re_prob", 0.0))

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """`images` (uint8, N x 3 x H x W, any memory format and device) as normalised floats;
        the lighting factors come from `generator` (CPU), one pair per image; erasing draws
        from Python's `random`, as timm's does (seeded per epoch by the trainer)."""
        if images.is_floating_point():
            return images
        import torch

        if self.spread.any():
            factors = 1 + (2 * torch.rand(len(images), 2, generator=generator) - 1) * self.spread
            images = light_and_normalize(images, factors[:, 0], factors[:, 1], self.mean,
                                         self.std)
        else:
            mean, std = (t.to(images.device).view(1, -1, 1, 1) for t in (self.mean, self.std))
            images = images.float().sub_(mean).div_(std)
        if self.erase_prob:
            from timm.data.random_erasing import RandomErasing

            RandomErasing(self.erase_prob, mode="const", device=images.device)(images)
        return images


def light_and_normalize(images: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                        mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 `images` as floats: b*(c*x + (1-c)*gray) clamped to [0, 255], minus `mean`, over
    `std`, with per-image `brightness` b and `contrast` c and per-channel `mean` and `std`
    (pixel units), in `images`' memory format.

    Two multiply-adds and a clamp to scalar bounds: a clamp to per-channel bounds after a single
    fused map is much slower than the scalar clamp, more than the map it saves.
    """
    import torch

    device = images.device
    images = images.float()
    b, c = brightness.to(device).view(-1, 1), contrast.to(device).view(-1, 1)
    gray = images.mean((2, 3)) @ torch.tensor(_LUMA, device=device).view(-1, 1)  # N x 1
    torch.addcmul((b * (1 - c) * gray)[..., None, None], images, (b * c)[..., None, None],
                  out=images)
    images.clamp_(0, 255)
    mean, std = mean.to(device).view(1, -1, 1, 1), std.to(device).view(1, -1, 1, 1)
    return torch.addcmul(-mean / std, images, 1 / std, out=images)
