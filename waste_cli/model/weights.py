"""Weights from files: wastecls checkpoints, timm/safetensors files and efficientnet_pytorch's
layout (renamed to timm's), fitted to a model whose head may have other classes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from waste_cli.core.errors import ModelError
from waste_cli.model.checkpoint import peek_checkpoint

__all__ = ["load_weights", "zero_head"]

_EFFNET_BLOCK = re.compile(r"^_blocks\.(\d+)\.(.+)$")


def zero_head(model: nn.Module) -> nn.Module:
    """Start a new classifier at zero: uniform first predictions, so its first (random)
    gradients do not wreck the pretrained features it sits on."""
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    return model


# efficientnet_pytorch block parts -> timm parts, for blocks with and without an expansion conv.
_EFFNET_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
              "_bn1": "bn2", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
              "_project_conv": "conv_pwl", "_bn2": "bn3"}


_EFFNET_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
              "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}


_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
               "_bn1": "bn2", "_fc": "classifier"}


def _from_efficientnet_pytorch(state: dict[str, torch.Tensor], model: nn.Module) -> dict:
    """Rename an efficientnet_pytorch state dict (`_blocks.N._depthwise_conv`) to timm's."""
    blocks = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expanded = {int(m.group(1)) for k in state if (m := _EFFNET_BLOCK.match(k))
                and m.group(2).startswith("_expand_conv")}
    renamed = {}
    for key, value in state.items():
        if match := _EFFNET_BLOCK.match(key):
            index, rest = int(match.group(1)), match.group(2)
            part, _, leaf = rest.partition(".")
            table = _EFFNET_IR if index in expanded else _EFFNET_DS
            if index >= len(blocks) or part not in table:
                raise ModelError(f"Weight '{key}' has no place in {type(model).__name__}.")
            renamed[f"{blocks[index]}.{table[part]}.{leaf}"] = value
        else:
            part, _, leaf = key.partition(".")
            renamed[f"{_EFFNET_TOP.get(part, part)}.{leaf}"] = value
    return renamed


def _wastecls_classes(path: Path) -> list[str] | None:
    """The class names of a wastecls checkpoint's classifier rows; None for other files."""
    data = peek_checkpoint(path)
    return list(data["classes"]) if data is not None else None


def _match_head(state: dict[str, torch.Tensor], head: set[str], source: list[str],
                target: list[str]) -> None:
    """Reorder a trained classifier's rows from the `source` class names to `target`'s: a class
    both know keeps what it learnt, a new one starts at zero (fine-tuning a waste model on
    other waste classes)."""
    for key in head & set(state):
        rows = torch.zeros((len(target), *state[key].shape[1:]), dtype=state[key].dtype)
        for index, name in enumerate(target):
            if name in source:
                rows[index] = state[key][source.index(name)]
        state[key] = rows


def _fitted(state: Any, model: nn.Module, path: Path, trained_classes: list[str] | None,
            classes: list[str] | None) -> dict[str, torch.Tensor]:
    """The state dict timm read from `path`, made to fit `model`: efficientnet_pytorch names
    renamed, a training script's wrapper prefix dropped, a wastecls classifier matched to
    `classes` by name, a classifier of another shape left out. Anything else that does not fit
    is an error naming it."""
    if isinstance(state, dict) and isinstance(state.get("model_state_dict"), dict):
        state = state["model_state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors.")
    for prefix in ("efficient_net.", "model."):  # Lightning modules' attribute names
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    if any(k.startswith("_blocks.") for k in state):
        state = _from_efficientnet_pytorch(state, model)
    own = model.state_dict()
    head = {f"{model.default_cfg.get('classifier', 'fc')}.{p}" for p in ("weight", "bias")}
    if trained_classes and classes and trained_classes != classes:
        _match_head(state, head, trained_classes, classes)
    state = {k: v for k, v in state.items() if not (k in head and v.shape != own[k].shape)}
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in state.items() if k in own and v.shape != own[k].shape]
    unexpected = sorted(set(state) - set(own))
    missing = sorted(k for k in set(own) - set(state) - head
                     if not k.endswith("num_batches_tracked"))
    if wrong or unexpected or missing:
        details = "; ".join(
            f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
            for label, items in (("wrong shape", wrong), ("unexpected", unexpected),
                                 ("missing", missing)) if items
        )
        raise ModelError(f"Weights in {path} do not fit this architecture ({details}).")
    return state


def load_weights(model: nn.Module, path: Path, classes: list[str] | None = None) -> None:
    """Load a local weights file into `model` through timm's checkpoint loader.

    timm reads the file (.safetensors, or a torch file loaded with weights_only: never code)
    and unwraps training checkpoints; `_fitted` adapts what it read: efficientnet_pytorch key
    names, a wastecls checkpoint's classifier matched to `classes` by name, a classifier of
    another number of classes started anew at zero.
    """
    from timm.models import load_checkpoint

    if not path.is_file():
        raise ModelError(f"Weights file {path} does not exist.")
    trained_classes = _wastecls_classes(path)
    loaded: dict[str, torch.Tensor] = {}

    def fit(state: Any, target: nn.Module) -> dict[str, torch.Tensor]:
        loaded.update(_fitted(state, target, path, trained_classes, classes))
        return loaded

    try:
        load_checkpoint(model, str(path), use_ema=False, strict=False, filter_fn=fit,
                        weights_only=True)
    except ModelError:
        raise
    except Exception as exc:  # torch and safetensors raise many types for unreadable files
        raise ModelError(
            f"Cannot read weights file {path} ({type(exc).__name__}): it is not a .safetensors "
            "file or a PyTorch weights file that loads safely. Give timm or efficientnet_pytorch "
            "weights, or a wastecls checkpoint.") from None
    head = {f"{model.default_cfg.get('classifier', 'fc')}.{p}" for p in ("weight", "bias")}
    if not head & set(loaded):  # the file's classifier did not fit: a new one, at zero
        zero_head(model)
