"""Figures a person would rather look at than read: curves, confusion matrix, top losses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt
import numpy as np

from waste_cli.core.console import printable
from waste_cli.core.files import atomic_path

__all__ = ["plot_confusion_matrix", "plot_curves", "plot_image_grid", "plot_reliability",
           "plot_risk_coverage"]


def _literal(text: str) -> str:
    """Text from data as matplotlib draws it literally: `$` would start mathtext (and a bad
    formula fails the whole figure), control characters would break the layout."""
    return printable(str(text)).replace("$", r"\$")


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_confusion_matrix(cm: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """Row-normalised colours with the counts written in each cell."""
    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted",
           ylabel="true", title=title)
    ax.set_xticklabels([_literal(c) for c in classes], rotation=45, ha="right")
    ax.set_yticklabels([_literal(c) for c in classes])
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, f"{count}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black")
    _save(fig, path)


def plot_curves(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy per epoch, train against validation."""
    epochs = [int(r["epoch"]) for r in rows]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("loss", loss_ax), ("acc", acc_ax)):
        for split, style in (("train", "-o"), ("val", "-s")):
            ax.plot(epochs, [float(r[f"{split}_{key}"]) for r in rows], style, label=split)
        ax.set(xlabel="epoch", ylabel=key, title=f"{key} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    acc_ax.plot(epochs, [float(r["val_macro_f1"]) for r in rows], "--", label="val macro-F1")
    acc_ax.legend()
    _save(fig, path)


def plot_image_grid(images: Sequence[np.ndarray], captions: Sequence[str], path: Path,
                    title: str) -> None:
    """A grid of images with a caption under each (used for the most confident mistakes)."""
    count = max(1, len(images))
    cols = min(4, count)
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions, strict=False):
        ax.imshow(image)
        ax.set_title("\n".join(_literal(line) for line in caption.split("\n")), fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def plot_reliability(bins: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Accuracy against confidence per confidence bin: on the diagonal, a probability means
    what it says; below it, the model is overconfident."""
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(5, 6), sharex=True,
                                     gridspec_kw={"height_ratios": [3, 1]})
    lefts = [b["lower"] for b in bins]
    widths = [b["upper"] - b["lower"] for b in bins]
    ax.bar(lefts, [b["accuracy"] for b in bins], width=widths, align="edge",
           edgecolor="black", alpha=0.8, label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    filled = [b for b in bins if b["count"]]  # the dot: what the model said, the bar: truth
    ax.scatter([(b["lower"] + b["upper"]) / 2 for b in filled],
               [b["confidence"] for b in filled], color="red", zorder=3, s=14,
               label="mean confidence")
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left")
    counts.bar(lefts, [b["count"] for b in bins], width=widths, align="edge", color="grey")
    counts.set(xlabel="confidence (top-1 probability)", ylabel="images")
    _save(fig, path)


def plot_risk_coverage(coverage: Sequence[float], risk: Sequence[float], path: Path,
                       title: str) -> None:
    """Error rate among the images kept, keeping the most confident first: how much answering
    less often buys."""
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(coverage, risk)
    ax.set(xlabel="coverage (share of images answered, most confident first)",
           ylabel="error rate among those", xlim=(0, 1), ylim=(0, None), title=title)
    ax.grid(alpha=0.3)
    _save(fig, path)
