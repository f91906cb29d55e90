"""Which labels of a dataset are likely wrong, from features alone (no training).

Out-of-fold probabilities come from two heads fitted on the other folds' features: a
multinomial logistic regression (on the features reduced to at most 256 principal components,
fast on a CPU) and a cosine k-nearest-neighbour vote; their mean is temperature-scaled on the
given labels, so the suggested class's probability means what it says. cleanlab's confident
learning (Northcutt et al. 2021) estimates how many labels are wrong, and that many of the
least believed labels are reported (its `low_self_confidence` filter: on TrashNet with 5% of
labels flipped it found as many flips as the default filter with far fewer false reports,
bench/bench_audit.py). Outliers are photos far from the rest of their class in the same
features.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from waste_cli.confidence.fit import fit_temperature
from waste_cli.confidence.measures import scaled_softmax

__all__ = ["LabelCheck", "check_labels", "class_outliers", "principal_components"]

COMPONENTS = 256  # principal components the logistic head reads
NEIGHBOURS = 10  # the kNN head's vote
KNN_SHARPNESS = 20.0  # neighbour weight exp(similarity * KNN_SHARPNESS)
OUTLIER_NEIGHBOURS = 5
OUTLIER_FENCE = 3.0  # Tukey's far-out fence: above Q3 + 3 IQR of the class's distances


@dataclass
class LabelCheck:
    probs: np.ndarray  # [images, classes] calibrated out-of-fold probabilities
    issues: list[int]  # likely label errors, most likely first
    folds: int
    temperature: float
    agreement: float  # share of photos whose out-of-fold top class is their given label


def _folds(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Fold of each photo, stratified by class (a class with fewer photos than folds spreads
    over as many as it has)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        fold[members] = (np.arange(len(members)) + offset) % count
        offset += len(members)
    return fold


def _knn_probs(train: np.ndarray, train_labels: np.ndarray, query: np.ndarray,
               classes: int) -> np.ndarray:
    similarity = query @ train.T
    k = min(NEIGHBOURS, train.shape[0])
    nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(similarity, nearest, axis=1) * KNN_SHARPNESS)
    votes = np.zeros((len(query), classes))
    np.add.at(votes, (np.arange(len(query))[:, None], train_labels[nearest]), weights)
    return votes / votes.sum(axis=1, keepdims=True)


def _logistic_probs(train: np.ndarray, train_labels: np.ndarray, query: np.ndarray,
                    classes: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train)
    head = LogisticRegression(C=0.05, max_iter=500)
    with warnings.catch_warnings():  # a head that stops at max_iter is still a good head
        warnings.simplefilter("ignore")
        head.fit(scaler.transform(train), train_labels)
    probs = np.zeros((len(query), classes))
    probs[:, head.classes_] = head.predict_proba(scaler.transform(query))
    return probs


def principal_components(features: np.ndarray) -> np.ndarray:
    """The features on their first COMPONENTS principal axes (no labels involved)."""
    if features.shape[1] <= COMPONENTS:
        return features
    centred = features - features.mean(axis=0)
    _, _, axes = np.linalg.svd(centred[:: max(1, len(centred) // 4000)], full_matrices=False)
    return centred @ axes[:COMPONENTS].T


def check_labels(features: np.ndarray, labels: np.ndarray, classes: int, folds: int,
                 seed: int) -> LabelCheck:
    """Out-of-fold probabilities of every photo (features: unit rows), and cleanlab's likely
    label errors among them, ranked by how little the given label is believed."""
    from cleanlab.filter import find_label_issues

    smallest = int(np.bincount(labels, minlength=classes)[np.unique(labels)].min())
    folds = max(2, min(folds, smallest)) if smallest >= 2 else folds
    fold = _folds(labels, folds, seed)
    reduced = principal_components(features)
    mixed = np.zeros((len(labels), classes))
    for k in range(folds):
        train, query = fold != k, fold == k
        if not query.any():
            continue
        mixed[query] = 0.5 * (
            _logistic_probs(reduced[train], labels[train], reduced[query], classes)
            + _knn_probs(features[train], labels[train], features[query], classes))
    logits = np.log(np.clip(mixed, 1e-8, 1.0))
    temperature = fit_temperature(logits, labels)
    probs = scaled_softmax(logits, temperature)
    present = np.unique(labels)
    issues: list[int] = []
    if len(present) >= 2:
        # cleanlab expects every class index in 0..K-1 to be used: map to the present ones
        index = {c: k for k, c in enumerate(present.tolist())}
        sub = probs[:, present]
        sub = sub / sub.sum(axis=1, keepdims=True)
        # as many as confident learning estimates there are, the least believed labels first
        found = find_label_issues(np.array([index[c] for c in labels.tolist()]), sub,
                                  filter_by="low_self_confidence",
                                  return_indices_ranked_by="self_confidence", n_jobs=1)
        issues = [int(i) for i in found]
    agreement = float((probs.argmax(1) == labels).mean()) if len(labels) else 0.0
    return LabelCheck(probs, issues, folds, temperature, agreement)


def class_outliers(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance of each photo to its OUTLIER_NEIGHBOURS-th nearest photo of its own class:
    1 - cosine similarity, whether it lies beyond its class's far-out fence)."""
    distance = np.zeros(len(labels), dtype=np.float32)
    outlier = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) <= OUTLIER_NEIGHBOURS + 1:
            continue
        similarity = features[members] @ features[members].T
        np.fill_diagonal(similarity, -np.inf)
        kth = -np.partition(-similarity, OUTLIER_NEIGHBOURS - 1, axis=1)[:, OUTLIER_NEIGHBOURS - 1]
        distance[members] = 1 - kth
        q1, q3 = np.percentile(distance[members], [25, 75])
        fence = q3 + OUTLIER_FENCE * (q3 - q1)
        outlier[members] = distance[members] > fence if math.isfinite(fence) else False
    return distance, outlier
