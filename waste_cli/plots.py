"""Figures a person would rather look at than read: curves, confusion matrix, top losses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt
import numpy as np

from waste_cli.fileio import atomic_path

__all__ = ["plot_confusion_matrix", "plot_curves", "plot_image_grid"]


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
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
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
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title)
    _save(fig, path)
