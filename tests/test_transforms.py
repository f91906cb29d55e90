"""The transforms: training augmentation (per-image, and finished per batch as timm's prefetcher
does) and the evaluation transform, which must equal timm's pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image
from torchvision.transforms.functional import (
    adjust_brightness,
    adjust_contrast,
    normalize,
    pil_to_tensor,
)

from waste_cli.data.loading import ImageDataset, build_loader
from waste_cli.data.transforms import (
    BatchFinish,
    data_config,
    light_and_normalize,
    train_transform,
)
from waste_cli.model.factory import create_model


@pytest.mark.parametrize("augment", ["strong", "light"])  # float, and uint8 channels_last
def test_augmentations_depend_on_the_epoch_seed_only(sample_dir, augment):
    """Same augmented batches for any worker count, and for a persistent worker in its 2nd epoch
    as for a fresh loader started at that epoch (what a resumed run does)."""
    samples = [(p, 0) for p in sorted(sample_dir.rglob("*.jpg"))[:12]]
    config = data_config(create_model(TINY["arch"], 2, pretrained=False), 32)
    dataset = ImageDataset(samples, train_transform(config, augment))

    def epochs(workers: int, seeds: list[int]) -> list[torch.Tensor]:
        generator = torch.Generator()
        loader = build_loader(dataset, 4, workers=workers, generator=generator, shuffle=True)
        batches = []
        for seed in seeds:
            generator.manual_seed(seed)
            batches.append(torch.cat([images for images, *_ in loader]))
        return batches

    first, second = epochs(2, [7, 8])
    assert not torch.equal(first, second)
    assert torch.equal(first, epochs(0, [7])[0])
    assert torch.equal(second, epochs(1, [8])[0])


def test_training_images_leave_the_loader_as_uint8_and_batches_are_finished(sample_dir):
    """`light` and `strong` leave colour, normalisation and erasing to `BatchFinish`; the float
    pipeline (FixMatch's views) still does them per image."""
    samples = [(p, 0) for p in sorted(sample_dir.rglob("*.jpg"))[:8]]
    config = data_config(create_model(TINY["arch"], 2, pretrained=False), 48)
    batches = {}
    for uint8 in (True, False):
        transform = train_transform(config, "light", uint8=uint8)
        names = [type(t).__name__ for t in transform.transforms]
        assert ("ColorJitter" in names) is not uint8
        assert "bilinear" in repr(transform.transforms[0])  # crops resize bilinearly
        dataset = ImageDataset(samples, transform)
        loader = build_loader(dataset, 4, workers=0, generator=torch.Generator().manual_seed(3),
                              shuffle=True)
        stacked = [images for images, *_ in loader]
        # uint8 images are stacked as they lie (HWC bytes): a channels_last batch
        assert stacked[0].is_contiguous(memory_format=torch.channels_last) is uint8
        batches[uint8] = torch.cat(stacked)
    assert batches[True].dtype == torch.uint8 and batches[False].dtype == torch.float32
    photo = Image.open(samples[0][0])
    assert train_transform(config, "strong")(photo).dtype == torch.uint8
    assert train_transform(config, "strong", uint8=False)(photo).dtype == torch.float32

    finish = BatchFinish(config, "light")
    uint8_batch = batches[True].contiguous(memory_format=torch.channels_last)
    finished = finish(uint8_batch, torch.Generator().manual_seed(0))
    assert finished.dtype == torch.float32
    assert finished.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(finished, finish(uint8_batch, torch.Generator().manual_seed(0)))
    assert not torch.equal(finished, finish(uint8_batch, torch.Generator().manual_seed(1)))
    # Each image is an affine map of its pixels whose gain (brightness x contrast) stays within
    # the light level's +-20% each, and differs between images.
    mean, std = (torch.tensor(config[k]).view(1, 3, 1, 1) * 255 for k in ("mean", "std"))
    pixels = (finished * std + mean).flatten(1)
    source = uint8_batch.float().flatten(1)
    gains = []
    for x, y in zip(source, pixels, strict=True):
        inside = (y > 1) & (y < 254)  # unclamped
        xc, yc = x[inside] - x[inside].mean(), y[inside] - y[inside].mean()
        gains.append(float((xc * yc).sum() / (xc * xc).sum()))
    assert all(0.8 * 0.8 - 0.02 <= g <= 1.2 * 1.2 + 0.02 for g in gains), gains
    assert max(gains) - min(gains) > 0.01
    assert finish(batches[False], torch.Generator()) is batches[False]  # float: already done
    plain = BatchFinish(config, "none")(uint8_batch, torch.Generator())  # normalisation only
    torch.testing.assert_close(plain, normalize(uint8_batch / 255, config["mean"],
                                                config["std"]), atol=1e-5, rtol=0)


def test_strong_batches_are_normalised_then_randomly_erased(sample_dir):
    import random

    config = data_config(create_model(TINY["arch"], 2, pretrained=False), 48)
    images = torch.stack([pil_to_tensor(Image.open(p).convert("RGB").resize((48, 48)))
                          for p in sorted(sample_dir.rglob("*.jpg"))[:24]])
    normalised = normalize(images / 255, config["mean"], config["std"])
    random.seed(1)
    strong = BatchFinish(config, "strong")(images.clone(), torch.Generator())
    changed = [not torch.allclose(a, b, atol=1e-5) for a, b in zip(strong, normalised,
                                                                   strict=True)]
    assert 0 < sum(changed) < len(changed)  # erasing hits some images (p = 0.25), not all
    for erased, original in zip(strong[changed], normalised[changed], strict=True):
        differ = ~torch.isclose(erased, original, atol=1e-5)
        assert (erased[differ] == 0).all()  # const mode: the erased box is zero, the mean


def test_batch_lighting_is_torchvisions_brightness_then_contrast(sample_dir):
    """One affine map per image and channel equals torchvision's two steps wherever those do
    not clamp in between (brightness at most 1)."""
    images = torch.stack([pil_to_tensor(Image.open(p).convert("RGB").resize((40, 32)))
                          for p in sorted(sample_dir.rglob("*.jpg"))[:6]])
    brightness = torch.tensor([0.8, 0.9, 1.0, 0.85, 0.95, 1.0])
    contrast = torch.tensor([0.8, 1.2, 1.0, 1.1, 0.9, 1.2])
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    ours = light_and_normalize(images, brightness, contrast, mean * 255, std * 255)
    expected = torch.stack([
        normalize(adjust_contrast(adjust_brightness(image / 255, float(b)), float(c)),
                  mean.tolist(), std.tolist())
        for image, b, c in zip(images, brightness, contrast, strict=True)])
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("size,crop_pct,interpolation", [
    (224, 0.875, "bicubic"), (32, 0.95, "bilinear"), (40, 1.0, "bicubic"), (64, 0.9, "nearest")])
def test_own_eval_transform_equals_timms(sample_dir, size, crop_pct, interpolation):
    from timm.data import create_transform

    from waste_cli.data.sources import load_rgb
    from waste_cli.data.transforms import CenterCropEval, eval_transform

    config = {"input_size": [3, size, size], "interpolation": interpolation,
              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
              "crop_pct": crop_pct, "crop_mode": "center"}
    timms = create_transform(input_size=(3, size, size), is_training=False,
                             interpolation=interpolation, mean=tuple(config["mean"]),
                             std=tuple(config["std"]), crop_pct=crop_pct, crop_mode="center")
    ours = eval_transform(config)
    assert isinstance(ours, CenterCropEval)
    photo = load_rgb(next(sample_dir.rglob("*.jpg")))
    images = [photo, photo.rotate(90, expand=True), photo.resize((size + 3, size + 1)),
              photo.resize((7, 300)), photo.resize((1000, 997))]
    for image in images:
        assert np.array_equal(ours(image), timms(image).numpy()), image.size
        row = np.empty((3, size, size), np.float32)  # a batch's row, as inference fills it
        assert ours(image, out=row) is row and np.array_equal(row, timms(image).numpy())
    assert not CenterCropEval.handles({**config, "crop_mode": "squash"})
    assert not isinstance(eval_transform({**config, "crop_pct": 1.2}), CenterCropEval)
