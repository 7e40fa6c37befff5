"""Embeddings from a frozen body, cached once, and linear probes trained on them.

Running a frozen backbone every epoch repeats the same forward pass; extracting the
features once and training only the linear head on them gives the same model for a
fraction of the time. That is the linear probe.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .data import make_loader
from .device import autocast, to_device
from .train import History, fit, save_atomic


@dataclass
class Features:
    """Embeddings (N, D) and labels (N,), on the CPU."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    def dataset(self) -> TensorDataset:
        return TensorDataset(self.x, self.y)


def extract_features(
    model: nn.Module, loader: Iterable, device: torch.device, cache: str | os.PathLike | None = None
) -> Features:
    """Run `model.features` (or the model itself) over `loader` once, in eval mode.

    With `cache`, the result is saved there (atomically) and reloaded on the next call,
    so a notebook re-run skips the extraction.
    """
    if cache is not None and Path(cache).exists():
        data = torch.load(Path(cache), weights_only=True)
        return Features(data["x"], data["y"])
    embed = getattr(model, "features", model)
    model.to(device).eval()
    xs, ys = [], []
    with torch.no_grad(), autocast(device):
        for x, y in loader:
            xs.append(embed(to_device(x, device)).float().flatten(1).cpu())
            ys.append(y.cpu())
    if not xs:
        raise ValueError("extract_features got an empty loader")
    feats = Features(torch.cat(xs), torch.cat(ys))
    if cache is not None:
        save_atomic({"x": feats.x, "y": feats.y}, cache)
    return feats


def linear_probe(
    train: Features,
    val: Features | None,
    num_classes: int,
    device: torch.device,
    epochs: int = 20,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = False,
) -> tuple[nn.Module, History]:
    """Train a linear classifier on fixed features with the course's `fit`."""
    if val is not None and val.dim != train.dim:
        raise ValueError(f"train features have {train.dim} dims but val features {val.dim}")
    torch.manual_seed(seed)
    head = nn.Linear(train.dim, num_classes)
    train_loader = make_loader(train.dataset(), batch_size, device, shuffle=True, seed=seed)
    val_loader = make_loader(val.dataset(), 1024, device) if val is not None else None
    history = fit(head, train_loader, val_loader, epochs=epochs, device=device, lr=lr,
                  weight_decay=weight_decay, progress=progress, desc="probe")
    return head, history


def sklearn_probe(train: Features, test: Features, c: float = 1.0, max_iter: int = 2000):
    """scikit-learn's LogisticRegression on standardised features; returns (model, accuracy)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    clf.fit(train.x.numpy(), train.y.numpy())
    return clf, float(clf.score(test.x.numpy(), test.y.numpy()))


def knn_accuracy(features: Features, k: int = 5) -> float:
    """Leave-one-out k-nearest-neighbour accuracy on standardised features.

    A label-free reading of a t-SNE map: how often an image's nearest neighbours in
    feature space share its class (every feature scaled to unit variance first, so
    random and trained features are measured alike).
    """
    if not 1 <= k < len(features):
        raise ValueError(f"k must be between 1 and {len(features) - 1}, got {k}")
    x = features.x.double()
    x = (x - x.mean(0)) / x.std(0).clamp(min=1e-8)
    dist = torch.cdist(x, x)
    dist.fill_diagonal_(float("inf"))  # an image is not its own neighbour
    neighbours = features.y[dist.topk(k, largest=False).indices]  # (N, k)
    votes = torch.nn.functional.one_hot(neighbours, int(features.y.max()) + 1).sum(1)
    return float((votes.argmax(1) == features.y).double().mean())


def embed_2d(features: Features, method: str = "tsne", seed: int = 0) -> torch.Tensor:
    """2-D coordinates of the features by t-SNE or PCA (for plotting)."""
    x = features.x.numpy()
    if method == "pca":
        from sklearn.decomposition import PCA

        return torch.as_tensor(PCA(n_components=2, random_state=seed).fit_transform(x))
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, max(5.0, (len(x) - 1) / 4))
        tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed,
                    max_iter=500)
        return torch.as_tensor(tsne.fit_transform(x))
    raise ValueError(f"unknown method {method!r}; use 'tsne' or 'pca'")
