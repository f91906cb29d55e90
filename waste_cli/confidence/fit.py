"""What a model knows of its own confidence: the temperature and kNN fits, the score, the flags.

numpy only. The temperature (Guo et al. 2017) is fitted on validation logits by NLL; the
unfamiliarity score is the distance to the k-th nearest training feature (Sun et al. 2022).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from waste_cli.confidence.measures import nll, scaled_softmax
from waste_cli.core.policy import DEFAULT_FAMILIAR_SHARE, DEFAULT_MIN_CONFIDENCE
from waste_cli.model.metadata import Calibration

__all__ = [
    "BANK_BYTES",
    "DEFAULT_FAMILIAR_SHARE",
    "DEFAULT_MIN_CONFIDENCE",
    "LOW_CONFIDENCE",
    "NEIGHBOURS",
    "UNFAMILIAR",
    "FittedCalibration",
    "choose_bank",
    "familiar_threshold",
    "fit_calibration",
    "fit_temperature",
    "flag_of",
    "flags_of",
    "knn_distance",
    "normalized",
]

def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T that minimises the NLL of softmax(logits / T) (Guo et al. 2017).

    The NLL is convex in 1/T, so a golden-section search over log T in [0.01, 100] finds the
    one minimum; 1.0 when there is nothing to fit on."""
    if len(targets) == 0:
        return 1.0
    low, high = math.log(0.01), math.log(100.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(logits, targets, math.exp(a)), nll(logits, targets, math.exp(b))
    while high - low > 1e-6:
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(logits, targets, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(logits, targets, math.exp(b))
    return math.exp((low + high) / 2)


NEIGHBOURS = 10  # k: Sun et al.'s choice for a bank of a few thousand photos


BANK_BYTES = 1_900_000  # the training features a model carries: its file grows under 2 MB






LOW_CONFIDENCE, UNFAMILIAR = "low-confidence", "unfamiliar"


@dataclass
class FittedCalibration:
    """A fit's result: what the model file stores, and how the fit went (for the report)."""

    calibration: Calibration
    bank: np.ndarray  # float16 [rows, features], rows of unit length
    report: dict[str, float]


def normalized(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), in float32."""
    features = np.asarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def choose_bank(train_features: np.ndarray, budget: int = BANK_BYTES) -> np.ndarray:
    """The training features a model carries: unit rows in float16, evenly spaced over the
    training photos (in class order, so each class keeps its share) when all of them would
    take more than `budget` bytes."""
    rows = max(1, min(len(train_features), budget // (2 * train_features.shape[1])))
    picks = np.floor(np.arange(rows) * len(train_features) / rows).astype(int)
    return normalized(train_features[picks]).astype(np.float16)


def knn_distance(features: np.ndarray, bank: np.ndarray, neighbours: int) -> np.ndarray:
    """1 - cosine similarity to the k-th nearest bank row, per row of `features` (float32, as
    the torch and ONNX versions compute it)."""
    similarity = normalized(features) @ bank.astype(np.float32).T
    k = min(neighbours, bank.shape[0])
    kth = -np.partition(-similarity, k - 1, axis=1)[:, k - 1]
    return (1 - kth).astype(np.float32)


def familiar_threshold(scores: np.ndarray, confident: np.ndarray, share: float) -> float:
    """The unfamiliarity threshold under which `share` of in-domain photos pass both checks.

    Photos already flagged as low-confidence spend part of the budget, so the threshold is the
    score of the ceil(share * (n + 1))-th most familiar confident photo (the split-conformal
    rank, so that on fresh photos at least `share` pass on average); when too few are
    confident, every in-domain score passes and only the confidence flag remains."""
    kept = np.sort(scores[confident])
    need = math.ceil(share * (len(scores) + 1))
    return float(kept[need - 1] if need <= len(kept) else scores.max(initial=0.0))


def fit_calibration(val_logits: np.ndarray, val_targets: np.ndarray,
                    train_features: np.ndarray, val_features: np.ndarray, *,
                    familiar_share: float = DEFAULT_FAMILIAR_SHARE,
                    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
                    neighbours: int = NEIGHBOURS) -> FittedCalibration:
    """Fit the temperature on validation logits (NLL) and the unfamiliarity threshold on
    validation features against the training features."""
    temperature = fit_temperature(val_logits, val_targets)
    bank = choose_bank(train_features)
    scores = knn_distance(val_features, bank, neighbours)
    confidence = scaled_softmax(val_logits, temperature).max(axis=1)
    threshold = familiar_threshold(scores, confidence >= min_confidence, familiar_share)
    calibration = Calibration(temperature=temperature, method="knn-cosine",
                              neighbours=min(neighbours, len(bank)),
                              unfamiliar_threshold=min(max(threshold, 0.0), 2.0),
                              familiar_share=familiar_share, min_confidence=min_confidence)
    flags = flags_of(confidence, scores, calibration)
    report = {"train_images": len(train_features), "val_images": len(val_targets),
              "bank_rows": len(bank), "val_nll_before": nll(val_logits, val_targets),
              "val_nll_after": nll(val_logits, val_targets, temperature),
              "val_flagged": sum(bool(f) for f in flags) / max(len(flags), 1)}
    return FittedCalibration(calibration, bank, report)


def flags_of(confidence: np.ndarray, unfamiliarity: np.ndarray,
             calibration: Calibration | None, min_confidence: float | None = None) -> list[str]:
    """`flag_of` for each row: calibrated top probabilities and unfamiliarity scores."""
    return [flag_of(float(c), float(s), calibration, min_confidence)
            for c, s in zip(confidence, unfamiliarity, strict=True)]


def flag_of(confidence: float, unfamiliarity: float, calibration: Calibration | None,
            min_confidence: float | None = None) -> str:
    """'unfamiliar' (the photo does not look like the training photos; it comes first: a
    confident answer about such a photo means little), 'low-confidence' (calibrated top
    probability under `min_confidence`, else the model's own default) or ''."""
    if calibration is not None and unfamiliarity > calibration.unfamiliar_threshold:
        return UNFAMILIAR
    floor = min_confidence if min_confidence is not None else (
        calibration.min_confidence if calibration is not None else DEFAULT_MIN_CONFIDENCE)
    return LOW_CONFIDENCE if confidence < floor else ""
