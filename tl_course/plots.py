"""Plots the notebooks use: training curves, image grids, confusion matrices, filters.

Each function draws on the matplotlib axis it is given (or a new one) and returns it,
so notebooks can compose figures with plt.subplots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator


def _axis(ax: Axes | None, figsize: tuple[float, float] = (5, 3.5)) -> Axes:
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_history(
    history, metric: str = "loss", ax: Axes | None = None, label: str = ""
) -> Axes:
    """Train and validation curves of `metric` ("loss", "acc", ...) per epoch."""
    ax = _axis(ax)
    prefix = f"{label} " if label else ""
    for split, style in (("train", "-"), ("val", "--")):
        key = f"{split}_{metric}"
        if key in history:
            values = history[key]
            ax.plot(range(1, len(values) + 1), values, style, marker="o", ms=3,
                    label=f"{prefix}{split}")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 1.5"
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def show_images(
    images: torch.Tensor,
    labels: Sequence[int] | torch.Tensor | None = None,
    ax: Axes | None = None,
    nrow: int = 8,
    title: str = "",
) -> Axes:
    """A grid of images (N, C, H, W) in [0, 1], with labels written under the grid."""
    from torchvision.utils import make_grid

    ax = _axis(ax, figsize=(nrow, 1.2 * max(1, len(images) // nrow)))
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, pad_value=1.0)
    ax.imshow(grid.permute(1, 2, 0).clamp(0, 1).numpy(), cmap="gray")
    ax.set_axis_off()
    if labels is not None:
        text = " ".join(str(int(v)) for v in labels)
        title = f"{title}\n{text}" if title else text
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> np.ndarray:
    """Counts[i, j] = examples of true class i predicted as j."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return counts


def plot_confusion_matrix(
    y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int = 10, ax: Axes | None = None
) -> Axes:
    """Confusion matrix as an image with counts written in the cells."""
    ax = _axis(ax, figsize=(4.5, 4.5))
    cm = confusion_matrix(y_true, y_pred, num_classes)
    ax.imshow(cm, cmap="Blues")
    for i in range(num_classes):
        for j in range(num_classes):
            if cm[i, j]:
                ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(num_classes))
    ax.set_yticks(range(num_classes))
    return ax


def plot_filters(weight: torch.Tensor, ax: Axes | None = None, nrow: int = 8) -> Axes:
    """The first-layer convolution filters (out, in, k, k), each scaled to [0, 1]."""
    w = weight.detach().float().cpu()[:, :1]  # first input channel
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    return show_images((w - lo) / (hi - lo + 1e-8), ax=ax, nrow=nrow, title="first-layer filters")


def plot_label_efficiency(
    results: Mapping[str, Mapping[int, Sequence[float]]], ax: Axes | None = None
) -> Axes:
    """Accuracy vs labels per class, one line per method, mean with a +-1 std band."""
    ax = _axis(ax, figsize=(6, 4))
    for method, by_k in results.items():
        ks = sorted(by_k)
        vals = [np.asarray(by_k[k], dtype=float) for k in ks]
        mean = np.array([v.mean() for v in vals])
        std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in vals])
        ax.plot(ks, mean, marker="o", label=method)
        ax.fill_between(ks, mean - std, mean + std, alpha=0.2)
    ax.set_xscale("log")
    ax.set_xticks(sorted(next(iter(results.values()))))
    ax.get_xaxis().set_major_formatter("{x:g}")
    ax.set(xlabel="labels per class", ylabel="target test accuracy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_embedding(
    coords: torch.Tensor, labels: torch.Tensor, ax: Axes | None = None, title: str = "",
    names: Sequence[str] | None = None,
) -> Axes:
    """A 2-D scatter of embedded points (t-SNE / PCA), coloured by label."""
    ax = _axis(ax, figsize=(4.5, 4))
    labels = np.asarray(labels)
    for c in np.unique(labels):
        pts = np.asarray(coords)[labels == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.7,
                   label=names[int(c)] if names is not None else str(c))
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2, loc="best")
    return ax


def show_cam(image: Any, cam: torch.Tensor, ax: Axes | None = None, title: str = "",
             alpha: float = 0.45) -> Axes:
    """An image with a Grad-CAM map (H, W) in [0, 1] laid over it (tlc.explain.grad_cam).

    `image` is a tensor (C, H, W) or a PIL image; it is shown at the map's size."""
    ax = _axis(ax, figsize=(2.5, 2.5))
    if isinstance(image, torch.Tensor):
        img = image.detach().cpu().float()
        img = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)
        ax.imshow(img.numpy(), cmap="gray")
    else:
        ax.imshow(image.resize((cam.shape[1], cam.shape[0])))
    ax.imshow(cam.cpu().numpy(), cmap="jet", alpha=alpha)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)
    return ax
