"""The model factory: timm's `create_model` with arch aliases, offline-first pretrained weights
and frozen layer groups.

timm is imported inside the functions that build models: importing it is slow (it pulls in
torch._dynamo through torchvision), and `predict` on an ONNX model never needs it.
"""

from __future__ import annotations

import difflib
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from torch import nn

from waste_cli.core.errors import ConfigError, ModelError
from waste_cli.model.checkpoint import Checkpoint
from waste_cli.model.weights import load_weights, zero_head

__all__ = [
    "ARCH_ALIASES",
    "HUB_TIMEOUT_S",
    "create_model",
    "freeze_layers",
    "model_from_checkpoint",
    "resolve_arch",
]

HUB_TIMEOUT_S = 3.0


# efficientnet_pytorch's spellings -> timm names with the same weights.
ARCH_ALIASES = {
    **{f"efficientnet-b{i}": f"tf_efficientnet_b{i}" for i in range(8)},
    **{f"efficientnet-lite{i}": f"tf_efficientnet_lite{i}" for i in range(5)},
}


def resolve_arch(arch: str) -> str:
    """A timm model name for `arch`; an unknown name is an error listing the closest ones."""
    import timm

    name = ARCH_ALIASES.get(arch.lower(), arch)
    if name in timm.list_models() or timm.is_model(name.split(".")[0]):
        return name
    candidates = sorted(set(timm.list_models()) | set(ARCH_ALIASES))
    close = difflib.get_close_matches(arch.lower(), candidates, n=5, cutoff=0.5)
    hint = f" Closest names: {', '.join(close)}." if close else ""
    raise ConfigError(
        f"Unknown architecture '{arch}'.{hint} Any timm model name works "
        "(`python -c \"import timm; print(timm.list_models('*effic*'))\"` lists them)."
    )


def _hub_reachable() -> bool:
    """A 3-second TCP probe of the Hugging Face endpoint (huggingface_hub retries for ~1 min)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
        with socket.create_connection((endpoint.hostname or "", port), timeout=HUB_TIMEOUT_S):
            return True
    except OSError:
        return False


def _cached_hub_file(name: str) -> str | None:
    """The pretrained weights of `name` in the local Hugging Face cache, if they are there."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    repo, _, revision = repo.partition("@")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def _create_pretrained(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """timm's pretrained model; offline, the file comes from the local Hugging Face cache.

    The reachability probe and the cache look-up keep an offline machine from waiting out
    huggingface_hub's retries (about a minute) before the same error.
    """
    import timm

    online = _hub_reachable()
    if not online:
        cached = _cached_hub_file(name)
        if cached is None:
            raise _no_pretrained(name, "the Hugging Face Hub cannot be reached")
        kwargs["pretrained_cfg_overlay"] = {"file": cached}
    try:
        model = timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        where = "the download failed" if online else "the cached file is unreadable"
        raise _no_pretrained(name, f"{where} ({type(exc).__name__})") from None
    return zero_head(model)


def _no_pretrained(name: str, why: str) -> ModelError:
    return ModelError(
        f"Cannot load pretrained weights for '{name}': {why}. Give a local weights file with "
        "--weights FILE (.pth/.safetensors in timm or efficientnet_pytorch layout, or a "
        "wastecls checkpoint), or train from scratch with --no-pretrained."
    )


def create_model(
    arch: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    weights: Path | None = None,
    drop_rate: float | None = None,
    classes: list[str] | None = None,
) -> nn.Module:
    """A timm classifier with `num_classes` outputs (named `classes`, when known).

    Weights come from `weights` (a local file: see `load_weights`) when given, else from timm's
    pretrained source when `pretrained`, else random initialisation. Options left as None keep
    timm's defaults for the architecture.
    """
    import timm

    name = resolve_arch(arch)
    kwargs = {k: v for k, v in {"drop_rate": drop_rate}.items() if v is not None}
    if pretrained and weights is None:
        return _create_pretrained(name, num_classes, **kwargs)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    if weights is not None:
        load_weights(model, weights, classes)
    return model


def freeze_layers(model: nn.Module, count: int) -> list[nn.Module]:
    """Fix the first `count` of timm's layer groups (the stem, then one group per stage).

    Early layers hold generic edge and texture features that a few epochs on a small waste
    dataset barely move (with --layer-decay they learn at a few percent of the head's rate),
    yet their backward pass at full resolution is the costliest part of a step: frozen, it is
    skipped. Returns the frozen modules, which the caller keeps in eval mode so their
    BatchNorm statistics stay the pretrained ones. This is Ultralytics' `freeze=N`. Not
    `timm.utils.freeze`: it swaps BatchNorm for FrozenBatchNorm2d, whose state dict lacks
    `num_batches_tracked`, so checkpoints would no longer load into a plain timm model.
    """
    from timm.models import group_modules, group_parameters

    try:
        matcher = model.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError):
        raise ModelError(f"--freeze-layers needs a model with timm layer groups; "
                         f"{type(model).__name__} has none.") from None
    groups = group_parameters(model, matcher)
    if count >= len(groups):
        raise ModelError(f"--freeze-layers {count}: this model has {len(groups)} layer groups "
                         f"and the last holds the classifier; use at most {len(groups) - 1} "
                         "(or --freeze-backbone to train the head alone).")
    frozen = sorted(groups)[:count]
    names = {name for group in frozen for name in groups[group]}
    for name, param in model.named_parameters():
        if name in names:
            param.requires_grad = False
    modules = group_modules(model, matcher)
    return [model.get_submodule(name) for group in frozen for name in modules.get(group, [])]


def model_from_checkpoint(checkpoint: Checkpoint) -> nn.Module:
    """The trained model of a checkpoint, in eval mode on the CPU."""
    import timm

    arch, classes = checkpoint["arch"], len(checkpoint["classes"])
    if not timm.is_model(arch.split(".")[0]):
        raise ModelError(f"Cannot use the checkpoint: its arch {arch!r} is not a timm model "
                         "this installation knows (a newer timm, or not a wastecls file?).")
    model = timm.create_model(arch, pretrained=False, num_classes=classes)
    own, given = model.state_dict(), checkpoint["model"]
    wrong = [f"{k}: {tuple(v.shape)} where the model has {tuple(own[k].shape)}"
             for k, v in given.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing, extra = sorted(set(own) - set(given)), sorted(set(given) - set(own))
    if wrong or missing or extra:
        what = wrong[0] if wrong else (f"{len(missing)} missing, e.g. {missing[0]}" if missing
                                       else f"{len(extra)} unexpected, e.g. {extra[0]}")
        raise ModelError(f"Cannot use the checkpoint: its weights do not fit {arch} with "
                         f"{classes} classes ({what}).")
    model.load_state_dict(given)
    return model.eval()
