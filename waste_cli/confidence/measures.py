"""How far confidence can be trusted: ECE, reliability bins, NLL, Brier, the risk-coverage curve,
AURC and AUROC (numpy only), and the one softmax every consumer of logits uses.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["BINS", "auroc", "calibration_report", "nll", "risk_coverage", "scaled_softmax"]

BINS = 15  # equal-width confidence bins, as Guo et al. report ECE


def calibration_report(probs: np.ndarray, targets: np.ndarray, bins: int = BINS
                       ) -> dict[str, Any]:
    """ECE, negative log-likelihood, Brier score and the reliability bins of `probs` (rows
    of class probabilities) against `targets` (class indices)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        accuracy = float(correct[members].mean()) if count else 0.0
        mean_confidence = float(confidence[members].mean()) if count else 0.0
        ece += count / max(len(targets), 1) * abs(accuracy - mean_confidence)
        table.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
                      "accuracy": accuracy, "confidence": mean_confidence})
    truth = probs[np.arange(len(targets)), targets]
    onehot = np.eye(probs.shape[1])[targets]
    return {
        "ece": ece,
        "nll": float(-np.log(np.clip(truth, 1e-12, 1.0)).mean()) if len(targets) else math.nan,
        "brier": float(((probs - onehot) ** 2).sum(axis=1).mean()) if len(targets) else math.nan,
        "bins": table,
    }


def risk_coverage(probs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """The error rate among the k most confident images for every k, its area (AURC: lower is
    better), and the accuracy when answering only the 90% and 95% most confident."""
    order = np.argsort(-probs.max(axis=1), kind="stable")
    wrong = (probs.argmax(axis=1) != targets)[order]
    kept = np.arange(1, len(order) + 1)
    risk = np.cumsum(wrong) / kept
    coverage = kept / max(len(order), 1)

    def accuracy_at(share: float) -> float:
        k = max(1, math.ceil(share * len(order)))
        return float(1 - risk[k - 1]) if len(order) else math.nan

    return {"aurc": float(risk.mean()) if len(order) else math.nan,
            "accuracy_at_90_coverage": accuracy_at(0.90),
            "accuracy_at_95_coverage": accuracy_at(0.95),
            "coverage": coverage.tolist(), "risk": risk.tolist()}


def scaled_softmax(logits: np.ndarray, temperature: float = 1.0,
                   dtype: type = np.float64) -> np.ndarray:
    """Row-wise softmax of `logits / temperature` in `dtype` (a -inf logit gets 0): float64 for
    the measures and fits, float32 where answers are printed (predict)."""
    scaled = np.asarray(logits, dtype=dtype) / temperature
    shifted = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `targets` under softmax(logits / temperature)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(scaled - top).sum(axis=1)) + top[:, 0]
    return float((log_norm - scaled[np.arange(len(targets)), targets]).mean())


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """The probability that a random `outside` score is higher than a random `inside` one
    (ties count half): how well the score separates the two sets, 0.5 being chance."""
    if not len(inside) or not len(outside):
        return math.nan
    scores = np.concatenate([inside, outside])
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    ordered = scores[order]
    for value in np.unique(ordered[1:][np.diff(ordered) == 0]):
        tied = scores == value  # tied scores share their mean rank
        ranks[tied] = ranks[tied].mean()
    above = ranks[len(inside):].sum() - len(outside) * (len(outside) + 1) / 2
    return float(above / (len(inside) * len(outside)))
