"""Resolve, then build: every choice of a training run, made once, before anything is built.

`resolve_run` turns the options into a `RunPlan`: every `auto` decided (below), the defaults that
depend on other settings (the schedule's, the loader's), and, for `--resume`, the saved run's
options merged with this call's. The trainer only wires objects together from the plan.

What `auto` means for each training setting, on this device and this data:

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from waste_cli import __version__
from waste_cli.core.errors import ConfigError
from waste_cli.core.policy import default_workers
from waste_cli.model.checkpoint import (
    ResumeCheckpoint,
    peek_checkpoint,
)
from waste_cli.model.factory import resolve_arch
from waste_cli.options import TrainOptions, flag_name, stored_options, unknown_options

__all__ = ["MACHINE_SETTINGS", "AutoChoice", "RunPlan", "available_memory", "loader_workers",
           "resolve_auto", "resolve_run", "resumed_options", "schedule"]

# Settings that describe this machine, not the experiment: a resumed run takes them anew.
MACHINE_SETTINGS = ("device", "workers", "quiet", "nproc", "neptune", "neptune_mode",
                    "neptune_project")
WARMUP_LR = 1e-6  # where the linear warm-up starts
MIN_LR_SHARE = 1e-3  # the schedule ends at this share of --lr
STEP_DECAY, EXP_DECAY = 0.1, 0.99  # --lr-decay's default for --sched step and exp

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
    data = peek_checkpoint(weights) if weights is not None else None
    return int(data["data_config"]["input_size"][-1]) if data is not None else None


def _own_size(cfg: Any) -> int:
    """The architecture's pretraining input size (224 when timm has no config for it)."""
    return int(cfg.input_size[-1]) if cfg is not None else 224


def _img_size(options: TrainOptions, cfg: Any, starts_trained: bool) -> AutoChoice:
    trained = _checkpoint_size(options.weights)
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


def _freeze_layers(options: TrainOptions, device: torch.device,
                   starts_trained: bool) -> AutoChoice:
    if device.type != "cpu":
        return AutoChoice("freeze_layers", 0, f"{device.type}: every layer trains")
    if not starts_trained:
        return AutoChoice("freeze_layers", 0, "random weights: every layer has to learn")
    groups = _layer_groups(options.arch)
    # The stem, the stages, then the head: keep the last two stages and the head training.
    frozen = max(0, groups - 3)
    return AutoChoice("freeze_layers", frozen,
                      f"cpu: the last two stages and the head train, {frozen} of {groups} "
                      "layer groups stay pretrained; their backward pass is most of a CPU step")


def _freeze_epochs(options: TrainOptions, starts_trained: bool) -> AutoChoice:
    if options.freeze_backbone:
        return AutoChoice("freeze_epochs", 0, "--freeze-backbone: only the head ever trains")
    if not starts_trained:
        return AutoChoice("freeze_epochs", 0, "random weights: no features to fit a head on")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return AutoChoice("freeze_epochs", 0, "several processes: DDP trains one set of "
                          "parameters throughout")
    epochs = round(options.epochs / 4)
    return AutoChoice("freeze_epochs", epochs,
                      "the head alone for the first quarter of the epochs, then fine-tuning "
                      "(LP-FT: it transferred best to another source's photos, BENCHMARKS.md)")


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


def resolve_auto(options: TrainOptions, device: torch.device,
                 paths: list[Path]) -> tuple[TrainOptions, list[AutoChoice]]:
    """`settings` with every `auto` value replaced, and the choices made (to print once).

    `paths` are the training and validation images: their count and size decide the cache.
    """
    import timm

    cfg = timm.get_pretrained_cfg(resolve_arch(options.arch))
    starts_trained = options.pretrained or options.weights is not None
    choices: list[AutoChoice] = []
    if options.img_size == "auto":
        choices.append(_img_size(options, cfg, starts_trained))
    if options.freeze_layers == "auto":
        choices.append(_freeze_layers(options, device, starts_trained))
    if options.freeze_epochs == "auto":
        choices.append(_freeze_epochs(options, starts_trained))
    if options.aug == "auto":
        choices.append(AutoChoice("aug", "light", "cpu: augmenting is cheap next to the model")
                       if device.type == "cpu" else
                       AutoChoice("aug", "strong", f"{device.type}: RandAugment regularises "
                                  "training every layer"))
    if options.amp is None:
        choices.append(AutoChoice("amp", device.type == "cuda", "cuda: bf16/fp16 tensor cores"
                                  if device.type == "cuda" else f"{device.type}: float32"))
    resolved = options.model_copy(update={c.name: c.value for c in choices})
    if options.cache == "auto":
        size = resolved.img_size if isinstance(resolved.img_size, int) else _own_size(cfg)
        choices.append(_cache(paths, size, cfg.crop_pct if cfg is not None else 0.875))
        resolved = resolved.model_copy(update={"cache": choices[-1].value})
    return resolved, choices


def loader_workers(options: TrainOptions, device: torch.device) -> int:
    """Loader processes: --workers, else none on a CPU with --cache ram (augmenting a cached
    image is cheap, and processes forked from the large training process slow its steps with
    copy-on-write faults), else policy's default (what keeps a GPU fed)."""
    if options.workers is not None:
        return options.workers
    if options.cache == "ram" and device.type == "cpu":
        return 0
    return default_workers()


def schedule(options: TrainOptions) -> dict[str, Any] | None:
    """timm `create_scheduler_v2` arguments for --sched (None: a constant rate), stepped per
    update (cosine, warm-up; the caller adds `updates_per_epoch`) or per epoch (step, exp)."""
    if options.sched == "none":
        return None
    kwargs: dict[str, Any] = {"num_epochs": options.epochs,
                              "warmup_epochs": options.warmup_epochs, "warmup_lr": WARMUP_LR,
                              "min_lr": options.lr * MIN_LR_SHARE}
    if options.sched == "cosine":
        return kwargs | {"sched": "cosine", "step_on_epochs": False}
    if options.sched == "step":
        return kwargs | {"sched": "step", "decay_rate": options.lr_decay or STEP_DECAY,
                         "decay_epochs": options.decay_epochs or max(1, options.epochs // 3)}
    # exp: lr *= lr_decay after every epoch (as torch's MultiplicativeLR)
    return kwargs | {"sched": "step", "decay_rate": options.lr_decay or EXP_DECAY,
                     "decay_epochs": 1}


def resumed_options(given: TrainOptions, last: ResumeCheckpoint, where: Path) -> TrainOptions:
    """The saved run's options, with this call's machine settings, --epochs and --data.

    Any other setting given now that differs from the saved run's is refused: a resumed run
    continues the experiment it started, it does not quietly change it.
    """
    saved = stored_options(last)
    unknown = unknown_options(saved, TrainOptions)
    if unknown:
        raise ConfigError(
            f"{where / 'last.pt'} stores training options this wastecls ({__version__}) does "
            f"not know: {', '.join(unknown)}. It was written by wastecls "
            f"{last.get('wastecls_version', 'of another version')}: resume it with that "
            "version, or start a new run from its weights (--weights last.pt).")
    allowed = {*MACHINE_SETTINGS, "epochs", "data", "resume"}
    changed = sorted(name for name in given.model_fields_set - allowed
                     if json_value(getattr(given, name)) != saved.get(name))
    if changed:
        listed = ", ".join(f"{flag_name(n)} (run: {saved.get(n)!r}, given: "
                           f"{json_value(getattr(given, n))!r})" for n in changed)
        raise ConfigError(f"--resume continues the run in {where} as it was set up; these "
                          f"settings differ and would be ignored: {listed}. Drop them, or "
                          "start a new run.")
    merged = saved | {k: getattr(given, k) for k in given.model_fields_set & allowed}
    if merged["epochs"] < last["train_state"]["epoch"]:
        raise ConfigError(f"--epochs {merged['epochs']} is below the "
                          f"{last['train_state']['epoch']} epochs {where} has already trained.")
    return TrainOptions.model_validate(merged)


def json_value(value: Any) -> Any:
    """A setting as the checkpoint stores it (paths as strings, tuples as lists)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [json_value(v) for v in value]
    return value


@dataclass(frozen=True)
class RunPlan:
    """A training run with every choice made: what the Trainer builds."""

    options: TrainOptions  # every `auto` resolved
    choices: list[AutoChoice] = field(default_factory=list)  # printed once
    workers: int = 0  # loader processes
    schedule: dict[str, Any] | None = None  # create_scheduler_v2 arguments
    last: ResumeCheckpoint | None = None  # --resume: where training continues from


def resolve_run(options: TrainOptions, device: torch.device, paths: list[Path],
                last: ResumeCheckpoint | None = None) -> RunPlan:
    """The complete plan of a run on `device` over the training and validation images
    `paths`; `last` is the checkpoint a resumed run continues from."""
    resolved, choices = resolve_auto(options, device, paths)
    return RunPlan(resolved, choices, loader_workers(resolved, device), schedule(resolved), last)
