"""Seeded, stratified splits of groups of images: what keeps duplicates and the crops of one
photo in one split."""

from __future__ import annotations

import random
from collections import defaultdict

__all__ = ["split_groups"]


def split_groups(
    groups: dict[str, str], fractions: dict[str, float], seed: int
) -> dict[str, str]:
    """Assign each group (key -> class) to a split, stratified by class and seeded.

    `fractions` maps split names to shares in assignment order; what is left goes to 'train'.
    Keys are sorted before the seeded shuffle, so the result depends only on the data and seed.
    """
    rng = random.Random(seed)
    by_class: dict[str, list[str]] = defaultdict(list)
    for key in sorted(groups):
        by_class[groups[key]].append(key)
    assignment = {}
    for label in sorted(by_class):
        keys = by_class[label]
        rng.shuffle(keys)
        start = 0
        for split, frac in fractions.items():
            count = min(round(len(keys) * frac), len(keys) - start)
            assignment.update(dict.fromkeys(keys[start : start + count], split))
            start += count
        assignment.update(dict.fromkeys(keys[start:], "train"))
    return assignment
