"""Classification metrics from a confusion matrix: one implementation for train and evaluate."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["classification_report", "confusion_matrix", "most_confused", "topk_correct"]


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts with rows = true class and columns = predicted class."""
    flat = targets.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> int:
    """How many targets are among the k highest logits."""
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == targets[:, None]).any(dim=1).sum())


def classification_report(cm: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1 and per-class precision/recall/F1/support.

    Classes without true images (support 0) are left out of the balanced accuracy and macro
    averages, so that evaluating on a subset of classes is not penalised for absent ones.
    """
    cm = cm.double()
    tp = cm.diag()
    support = cm.sum(dim=1)
    predicted = cm.sum(dim=0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12),
                     torch.zeros_like(tp))
    present = support > 0
    total = float(cm.sum())
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": [
            {"class": name, "precision": float(precision[i]), "recall": float(recall[i]),
             "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(classes)
        ],
    }


def most_confused(cm: torch.Tensor, classes: list[str], top: int = 5) -> list[dict[str, Any]]:
    """The off-diagonal cells with the most images: (true, predicted, count)."""
    off = cm.clone()
    off.fill_diagonal_(0)
    values, flat = off.flatten().sort(descending=True)
    n = len(classes)
    return [
        {"true": classes[int(i) // n], "predicted": classes[int(i) % n], "count": int(v)}
        for v, i in zip(values[:top], flat[:top], strict=True) if v > 0
    ]
