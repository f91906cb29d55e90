"""Models: timm's factory with efficientnet_pytorch's arch names, local weights, frozen layers.

timm is imported inside the functions that build models: importing it is slow (it pulls in
torch._dynamo through torchvision), and `predict` on an ONNX model never needs it.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from waste_cli.checkpoint import Checkpoint, is_wastecls_checkpoint, load_tensors
from waste_cli.errors import ConfigError, ModelError

__all__ = [
    "MID_LEVEL_REDUCTION",
    "FeatureClassifier",
    "ScoredClassifier",
    "create_model",
    "deployable_model",
    "freeze_layers",
    "load_weights",
    "mid_level_stage",
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


def _zero_head(model: nn.Module) -> nn.Module:
    """Start a new classifier at zero: uniform first predictions, so its first (random)
    gradients do not wreck the pretrained features it sits on."""
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    return model


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
    return _zero_head(model)


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


# --- weight files -------------------------------------------------------------------------

_EFFNET_BLOCK = re.compile(r"^_blocks\.(\d+)\.(.+)$")
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
    if path.suffix == ".safetensors":
        return None
    try:
        data = load_tensors(path, mmap=True)
    except Exception:  # not a zip file torch reads: timm's loader says what it is
        return None
    return list(data["classes"]) if is_wastecls_checkpoint(data) else None


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
        _zero_head(model)


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


# --- trained models ---------------------------------------------------------------------

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


MID_LEVEL_REDUCTION = 16  # the stage whose output the unfamiliarity score also compares


def mid_level_stage(model: nn.Module) -> tuple[int, str] | None:
    """(feature_info index, module name) of the model's last stage at 1/16 of the input, or
    None when the model cannot return it (no timm `feature_info` or `forward_intermediates`)."""
    info = getattr(model, "feature_info", None)
    if not info or not hasattr(model, "forward_intermediates"):
        return None
    stages = [(i, f["module"]) for i, f in enumerate(info)
              if f.get("reduction") == MID_LEVEL_REDUCTION]
    return stages[-1] if stages else None


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(rows.float(), dim=1, eps=1e-12)


class FeatureClassifier(nn.Module):
    """A timm classifier that also returns the features its unfamiliarity score compares:
    (logits, features), the logits exactly the model's own in eval mode.

    The features are two views side by side, each of unit length: the pooled output of the
    last stage at 1/16 of the input (mid-level: what the photo looks like; on a CPU recipe
    still the pretrained layers) and the pooled final features (what the classifier reads:
    what it is). bench/bench_confidence.py measured the pair against the final ones alone."""

    output_names = ("logits", "features")

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.stage = mid_level_stage(model)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = []
        if self.stage is None:
            final = self.model.forward_features(image)
        else:
            final, (mid,) = self.model.forward_intermediates(image, indices=[self.stage[0]],
                                                             intermediates_only=False)
            parts.append(_unit(mid.float().mean(dim=(2, 3))))
        pooled = self.model.forward_head(final, pre_logits=True)
        parts.append(_unit(pooled))
        features = torch.cat(parts, dim=1) / len(parts) ** 0.5  # still of unit length
        return self.model.get_classifier()(pooled), features


class ScoredClassifier(nn.Module):
    """A classifier that also says how unlike its training photos an image is: (logits,
    unfamiliarity), the score computed as `familiarity.knn_distance` does, from the training
    features the model carries (float16, as stored)."""

    output_names = ("logits", "unfamiliarity")

    def __init__(self, model: nn.Module, bank: torch.Tensor, neighbours: int) -> None:
        super().__init__()
        self.features = FeatureClassifier(model)
        self.register_buffer("bank", bank.to(torch.float16))
        self.neighbours = min(neighbours, bank.shape[0])

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.features(image)
        similarity = _unit(features) @ self.bank.float().T
        kth = similarity.topk(self.neighbours, dim=1).values[:, -1]
        return logits, 1 - kth


def deployable_model(checkpoint: Checkpoint) -> nn.Module:
    """What runs and what is exported: the trained model, with its unfamiliarity score when the
    checkpoint is calibrated (its `output_names` say what it returns)."""
    model = model_from_checkpoint(checkpoint)
    calibration, bank = checkpoint.get("calibration"), checkpoint.get("familiar_features")
    if calibration is None or bank is None:
        return model
    scored = ScoredClassifier(model, bank, int(calibration["neighbours"])).eval()
    with torch.inference_mode():
        width = scored.features(torch.zeros(1, *checkpoint["data_config"]["input_size"]))[1]
    if bank.shape[1] != width.shape[1]:
        raise ModelError(f"Cannot use the checkpoint: its familiar_features {tuple(bank.shape)} "
                         f"do not fit {checkpoint['arch']} ({width.shape[1]} features). "
                         "Calibrate it again with `wastecls calibrate`.")
    return scored
