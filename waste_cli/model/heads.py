"""Wrappers that make a timm model answer more than logits: its pooled features, and the
unfamiliarity score computed inside the model (so exported files carry it).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from waste_cli.core.errors import ModelError
from waste_cli.model.checkpoint import Checkpoint
from waste_cli.model.factory import model_from_checkpoint

__all__ = [
    "MID_LEVEL_REDUCTION",
    "FeatureClassifier",
    "ScoredClassifier",
    "SortFreeScoredClassifier",
    "deployable_model",
    "mid_level_stage",
]

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
    unfamiliarity), the score computed as `confidence.fit.knn_distance` does, from the training
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
        return logits, 1 - self.kth_largest(similarity)

    def kth_largest(self, similarity: torch.Tensor) -> torch.Tensor:
        return similarity.topk(self.neighbours, dim=1).values[:, -1]


class SortFreeScoredClassifier(ScoredClassifier):
    """The same model and score, the k-th nearest found by k passes of max: TFLite's
    interpreters have no sort, which `topk` becomes there. Equal to `topk` but for ties
    (cosine similarities: none in practice; bench and tests compare the two)."""

    @classmethod
    def of(cls, scored: ScoredClassifier) -> SortFreeScoredClassifier:
        twin = copy.copy(scored)
        twin.__class__ = cls
        twin._buffers = {**scored._buffers, "bank": scored.bank.float()}  # one type per op
        return twin

    def kth_largest(self, similarity: torch.Tensor) -> torch.Tensor:
        values = similarity
        for _ in range(self.neighbours - 1):
            top = values.max(dim=1, keepdim=True).values
            values = torch.where(values >= top, torch.full_like(values, -2.0), values)
        return values.max(dim=1).values


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
