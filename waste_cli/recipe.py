"""What `auto` means for each training setting, on this device and this data.

The defaults are a recipe, not a guess: on a CPU the one measured in BENCHMARKS.md (a higher
resolution than pretraining, early stages frozen, light augmentation, images cached in RAM), on
a GPU every layer training with mixed precision and RandAugment. Each rule below depends only
on the machine, the architecture and the size of the data, never on a dataset's test split.
The trainer prints every choice once and writes the resolved values to the run's config.yaml,
so `--config config.yaml` repeats the run exactly; an explicit flag always wins.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from waste_cli.checkpoint import CHECKPOINT_FORMAT, load_tensors
from waste_cli.models import resolve_arch
from waste_cli.settings import TrainSettings, flag_name

__all__ = ["AutoChoice", "available_memory", "resolve_auto"]

# timm's test_input_size is about 1.3x the training size for the models that have one: a CNN
# fine-tuned above its pretraining resolution sees objects larger, as at test time (FixRes).
FIXRES_SCALE = 1.3
CACHE_SHARE = 0.25  # the RAM cache may take this share of the memory available now
HEADER_SAMPLE = 64  # image headers read to estimate the cache's size


@dataclass(frozen=True)
class AutoChoice:
    """One resolved `auto` setting and why it got that value."""

    name: str
    value: Any
    reason: str

    def __str__(self) -> str:
        value = ("on" if self.value else "off") if isinstance(self.value, bool) else self.value
        return f"{flag_name(self.name)[2:]} auto -> {value} ({self.reason})"


def available_memory() -> int:
    """Bytes of memory free for new allocations (Linux MemAvailable, else the physical total)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _checkpoint_size(weights: Path | None) -> int | None:
    """The input size a wastecls checkpoint given as --weights was trained at, else None."""
    if weights is None or weights.suffix not in {".pt", ".pth"}:
        return None
    try:
        data = load_tensors(weights, mmap=True)
    except Exception:  # not a zip checkpoint: models.load_weights reports what it is
        return None
    if isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT:
        return int(data["data_config"]["input_size"][-1])
    return None


def _own_size(cfg: Any) -> int:
    """The architecture's pretraining input size (224 when timm has no config for it)."""
    return int(cfg.input_size[-1]) if cfg is not None else 224


def _img_size(settings: TrainSettings, cfg: Any, starts_trained: bool) -> AutoChoice:
    trained = _checkpoint_size(settings.weights)
    if trained is not None:
        return AutoChoice("img_size", trained, "the size --weights was trained at")
    size = _own_size(cfg)
    if cfg is not None and cfg.fixed_input_size:
        return AutoChoice("img_size", size, "this architecture takes one input size")
    if not starts_trained:
        return AutoChoice("img_size", size, "the architecture's own size: random weights")
    if cfg is not None and cfg.test_input_size:
        return AutoChoice("img_size", int(cfg.test_input_size[-1]),
                          "timm's test size, above the pretraining size (FixRes)")
    scaled = round(size * FIXRES_SCALE / 32) * 32
    return AutoChoice("img_size", scaled, f"FixRes: {FIXRES_SCALE}x the pretraining size {size}")


def _layer_groups(arch: str) -> int:
    """How many of timm's coarse layer groups the architecture has (0 if it has none)."""
    import timm
    from timm.models import group_parameters

    name = resolve_arch(arch)
    try:
        with torch.device("meta"):  # the structure only: no memory, no initialisation
            model = timm.create_model(name, pretrained=False, num_classes=2)
    except Exception:  # a model whose constructor computes on its tensors: build it for real
        model = timm.create_model(name, pretrained=False, num_classes=2)
    try:
        return len(group_parameters(model, model.group_matcher(coarse=True)))
    except (AttributeError, NotImplementedError):
        return 0


def _freeze_layers(settings: TrainSettings, device: torch.device,
                   starts_trained: bool) -> AutoChoice:
    if device.type != "cpu":
        return AutoChoice("freeze_layers", 0, f"{device.type}: every layer trains")
    if not starts_trained:
        return AutoChoice("freeze_layers", 0, "random weights: every layer has to learn")
    groups = _layer_groups(settings.arch)
    # The stem, the stages, then the head: keep the last two stages and the head training.
    frozen = max(0, groups - 3)
    return AutoChoice("freeze_layers", frozen,
                      f"cpu: the last two stages and the head train, {frozen} of {groups} "
                      "layer groups stay pretrained; their backward pass is most of a CPU step")


def _cache_bytes(paths: list[Path], short_side: int) -> int:
    """The RAM cache's size: every image with its shorter side at `short_side`, RGB uint8."""
    from PIL import Image

    step = max(1, len(paths) // HEADER_SAMPLE)
    areas = []
    for path in paths[::step][:HEADER_SAMPLE]:
        try:
            with Image.open(path) as image:  # reads the header only
                width, height = image.size
        except Exception:  # unreadable files are reported by the loader, not here
            continue
        scale = min(1.0, short_side / max(1, min(width, height)))
        areas.append(width * height * scale * scale)
    mean_area = sum(areas) / len(areas) if areas else short_side * short_side * 4 / 3
    return int(len(paths) * mean_area * 3)


def _cache(paths: list[Path], img_size: int, crop_pct: float) -> AutoChoice:
    need = _cache_bytes(paths, math.ceil(img_size / crop_pct))
    free = available_memory()
    mib = f"{need / 2**20:,.0f} MiB of {free / 2**20:,.0f} MiB free"
    if need <= CACHE_SHARE * free:
        return AutoChoice("cache", "ram", f"the decoded images fit: {mib}")
    return AutoChoice("cache", "none", f"too large for RAM: {mib}")


def resolve_auto(settings: TrainSettings, device: torch.device,
                 paths: list[Path]) -> tuple[TrainSettings, list[AutoChoice]]:
    """`settings` with every `auto` value replaced, and the choices made (to print once).

    `paths` are the training and validation images: their count and size decide the cache.
    """
    import timm

    cfg = timm.get_pretrained_cfg(resolve_arch(settings.arch))
    starts_trained = settings.pretrained or settings.weights is not None
    choices: list[AutoChoice] = []
    if settings.img_size == "auto":
        choices.append(_img_size(settings, cfg, starts_trained))
    if settings.freeze_layers == "auto":
        choices.append(_freeze_layers(settings, device, starts_trained))
    if settings.aug == "auto":
        choices.append(AutoChoice("aug", "light", "cpu: augmenting is cheap next to the model")
                       if device.type == "cpu" else
                       AutoChoice("aug", "strong", f"{device.type}: RandAugment regularises "
                                  "training every layer"))
    if settings.amp is None:
        choices.append(AutoChoice("amp", device.type == "cuda", "cuda: bf16/fp16 tensor cores"
                                  if device.type == "cuda" else f"{device.type}: float32"))
    resolved = settings.model_copy(update={c.name: c.value for c in choices})
    if settings.cache == "auto":
        size = resolved.img_size if isinstance(resolved.img_size, int) else _own_size(cfg)
        choices.append(_cache(paths, size, cfg.crop_pct if cfg is not None else 0.875))
        resolved = resolved.model_copy(update={"cache": choices[-1].value})
    return resolved, choices
