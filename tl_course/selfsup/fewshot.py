"""Few labels: k labelled images per class, many paired episodes, probes and small trainings.

Every representation is scored on the same episodes (the same k images per class), so
differences between methods are paired, not noise between different draws.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from ..data import make_loader
from ..device import seed_everything, to_device
from ..features import Features
from ..train import StepContext, accuracy, fit
from .views import Views, augment


def episode_indices(labels: torch.Tensor, k: int, episodes: int, seed: int = 0
                    ) -> list[torch.Tensor]:
    """`episodes` draws of k indices per class from `labels` (same seed: same draws)."""
    classes = torch.unique(labels)
    counts = torch.stack([(labels == c).sum() for c in classes])
    if k < 1 or k > int(counts.min()):
        raise ValueError(f"k must be between 1 and {int(counts.min())} (the smallest class), "
                         f"got {k}")
    draws = []
    for e in range(episodes):
        gen = torch.Generator().manual_seed(seed * 100_003 + e * 101 + k)
        idx = [torch.nonzero(labels == c).flatten() for c in classes]
        draws.append(torch.cat([i[torch.randperm(len(i), generator=gen)[:k]] for i in idx]))
    return draws


def probe_accuracy(train: Features, test: Features, c: float = 1.0) -> float:
    """Logistic regression on standardised features (scikit-learn); test accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train.x.numpy())
    clf = LogisticRegression(C=c, max_iter=2000)
    clf.fit(scaler.transform(train.x.numpy()), train.y.numpy())
    return float(clf.score(scaler.transform(test.x.numpy()), test.y.numpy()))


def probe_episodes(train: Features, test: Features, draws: Sequence[torch.Tensor],
                   c: float = 1.0) -> list[float]:
    """probe_accuracy on each episode's rows of `train`."""
    return [probe_accuracy(Features(train.x[i], train.y[i]), test, c) for i in draws]


class AugmentedStep:
    """Classification `fit` step on a fresh random view of each image (`Views`)."""

    def __init__(self, views: Views):
        self.views = views

    def __call__(self, model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Any]:
        x, y = to_device(batch, ctx.device)
        if ctx.training:
            x = augment(x, self.views)
        logits = model(x)
        return {"loss": F.cross_entropy(logits.float(), y),
                "acc": (logits.argmax(1) == y).float().mean(), "n": y.shape[0]}


def train_few(model: nn.Module, train: TensorDataset, device: torch.device, *, steps: int,
              lr: float, views: Views | None, seed: int = 0, batch_size: int = 32,
              encoder_lr: float | None = None) -> nn.Module:
    """Train a classifier on a few labelled images for about `steps` steps (with `views`
    as augmentation when given). `encoder_lr` sets a separate learning rate for
    everything but the head (fine-tuning a pretrained encoder)."""
    seed_everything(seed)
    loader = make_loader(train, min(batch_size, len(train)), device, shuffle=True, seed=seed)
    epochs = max(1, round(steps / len(loader)))
    if encoder_lr is None:
        params: Any = model.parameters()
    else:
        head = list(model.head.parameters())
        head_ids = {id(p) for p in head}
        rest = [p for p in model.parameters() if id(p) not in head_ids]
        params = [{"params": head, "lr": lr}, {"params": rest, "lr": encoder_lr}]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    step = AugmentedStep(views) if views is not None else None
    kwargs = {"step": step} if step is not None else {}
    fit(model, loader, epochs=epochs, device=device, optimizer=opt, progress=False, **kwargs)
    return model.eval()


def accuracy_on(model: nn.Module, test: TensorDataset, device: torch.device) -> float:
    """Plain test accuracy (eval mode, no augmentation)."""
    return accuracy(model, make_loader(test, 1024, device), device)


def train_episodes(make_model: Callable[[], nn.Module], pool: TensorDataset,
                   test: TensorDataset, draws: Sequence[torch.Tensor], device: torch.device,
                   **train_kwargs: Any) -> list[float]:
    """Train a fresh `make_model()` on each episode's images; test accuracy per episode.

    Episode e builds its model and trains it with seed e: two models compared on the same
    draws (two sources, or pretrained against scratch) get the same fresh head's weights
    and the same batches, so the comparison is paired."""
    x, y = pool.tensors
    accs = []
    for e, idx in enumerate(draws):
        seed_everything(e)  # the fresh head (or scratch network) is drawn here
        model = train_few(make_model(), TensorDataset(x[idx], y[idx]), device, seed=e,
                          **train_kwargs)
        accs.append(accuracy_on(model, test, device))
    return accs


def classifier_from(encoder: nn.Module, num_classes: int = 10) -> nn.Module:
    """A copy of a pretrained encoder (a TransferModel) with a fresh classification head."""
    return copy.deepcopy(encoder).reset_head(num_classes)
