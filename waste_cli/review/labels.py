"""Which labels of a dataset are likely wrong, from features alone (no training).

Out-of-fold probabilities come from two heads fitted on the other folds' features: a
multinomial logistic regression (on the features reduced to at most 256 principal components,
fast on a CPU) and a cosine k-nearest-neighbour vote; their mean is temperature-scaled on the
given labels, so the suggested class's probability means what it says. cleanlab's confident
learning (Northcutt et al. 2021) estimates how many labels are wrong, and that many of the
least believed labels are reported (its `low_self_confidence` filter), after a second pass
whose heads leave the first pass's suspects out. Both choices were measured on TrashNet with
5% of its labels flipped (bench/bench_audit.py): cleanlab's default filter reported 40% more
photos for about as many flips; the second pass finds more flips at the same count. Outliers
are photos far from the rest of their class in the same features.
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
    """Fold of each photo, stratified by class (scikit-learn's StratifiedKFold)."""
    from sklearn.model_selection import StratifiedKFold

    fold = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedKFold(count, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class with fewer photos than folds is spread thin
        warnings.simplefilter("ignore")
        for k, (_, query) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
            fold[query] = k
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
    """The features on their first COMPONENTS principal axes (scikit-learn's PCA; no labels
    involved)."""
    from sklearn.decomposition import PCA

    if min(features.shape) <= COMPONENTS:
        return features
    return PCA(COMPONENTS, svd_solver="randomized", random_state=0).fit_transform(features)


def _out_of_fold(features: np.ndarray, reduced: np.ndarray, labels: np.ndarray,
                 fold: np.ndarray, classes: int, trusted: np.ndarray) -> tuple[np.ndarray, float]:
    """Temperature-scaled out-of-fold probabilities, the heads fitted on the `trusted` photos
    of the other folds; and the temperature."""
    mixed = np.zeros((len(labels), classes))
    for k in np.unique(fold):
        train, query = (fold != k) & trusted, fold == k
        mixed[query] = 0.5 * (
            _logistic_probs(reduced[train], labels[train], reduced[query], classes)
            + _knn_probs(features[train], labels[train], features[query], classes))
    logits = np.log(np.clip(mixed, 1e-8, 1.0))
    temperature = fit_temperature(logits[trusted], labels[trusted])
    return scaled_softmax(logits, temperature), temperature


def _suspects(probs: np.ndarray, labels: np.ndarray) -> list[int]:
    """cleanlab's likely label errors: as many as confident learning estimates there are, the
    least believed labels first."""
    from cleanlab.filter import find_label_issues

    present = np.unique(labels)
    if len(present) < 2:
        return []
    # cleanlab expects every class index in 0..K-1 to be used: map to the present ones
    index = {c: k for k, c in enumerate(present.tolist())}
    sub = probs[:, present] / probs[:, present].sum(axis=1, keepdims=True)
    found = find_label_issues(np.array([index[c] for c in labels.tolist()]), sub,
                              filter_by="low_self_confidence",
                              return_indices_ranked_by="self_confidence", n_jobs=1)
    return [int(i) for i in found]


def check_labels(features: np.ndarray, labels: np.ndarray, classes: int, folds: int,
                 seed: int) -> LabelCheck:
    """Out-of-fold probabilities of every photo (features: unit rows), and the likely label
    errors among them, ranked by how little the given label is believed.

    Two passes: the suspects of the first are left out of the heads' training in the second
    (a wrong label no longer pulls its neighbours' answers), and as many photos as the first
    pass suspected are reported, in the order of the second's self-confidence."""
    smallest = int(np.bincount(labels, minlength=classes)[np.unique(labels)].min())
    folds = max(2, min(folds, smallest)) if smallest >= 2 else folds
    fold = _folds(labels, folds, seed)
    reduced = principal_components(features)
    everyone = np.ones(len(labels), dtype=bool)
    probs, temperature = _out_of_fold(features, reduced, labels, fold, classes, everyone)
    suspects = _suspects(probs, labels)
    trusted = everyone.copy()
    trusted[suspects] = False
    if suspects and all((labels[trusted] == c).sum() >= 2 for c in np.unique(labels)):
        probs, temperature = _out_of_fold(features, reduced, labels, fold, classes, trusted)
    believed = probs[np.arange(len(labels)), labels]
    issues = np.argsort(believed, kind="stable")[:len(suspects)].tolist()
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
