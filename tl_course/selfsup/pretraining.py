"""Pretraining without labels through `tlc.fit`, a k-NN monitor, and a load-or-train cache."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..data import data_dir, make_loader
from ..device import seed_everything
from ..features import Features, extract_features
from ..train import History, fit, load_checkpoint, save_checkpoint
from .pretext import make_pretext
from .views import DEFAULT_VIEWS, Views


def unlabelled(images: torch.Tensor) -> TensorDataset:
    """A dataset of images only: the labels are not hidden, they are not there."""
    if images.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
    return TensorDataset(images)


@dataclass
class KnnMonitor:
    """Nearest-neighbour accuracy of a few labelled images, read during pretraining.

    Each test image takes the label of its nearest labelled image (cosine similarity of
    encoder features): no training, so it shows what the representation alone knows.
    """

    bank: TensorDataset  # a few labelled images (x, y)
    test: TensorDataset  # labelled images to score

    def __call__(self, model: nn.Module, device: torch.device) -> float:
        was_training = model.training
        bank = extract_features(model, DataLoader(self.bank, batch_size=512), device)
        test = extract_features(model, DataLoader(self.test, batch_size=512), device)
        model.train(was_training)
        return knn_predict_accuracy(bank, test)


def knn_predict_accuracy(bank: Features, test: Features) -> float:
    """1-nearest-neighbour accuracy of `test` against `bank` by cosine similarity."""
    a = torch.nn.functional.normalize(bank.x.double(), dim=1)
    b = torch.nn.functional.normalize(test.x.double(), dim=1)
    nearest = (b @ a.T).argmax(1)
    return float((bank.y[nearest] == test.y).double().mean())


def pretrain(method: str, images: torch.Tensor, device: torch.device, *, steps: int,
             batch_size: int = 256, lr: float = 2e-3, seed: int = 0, views: Views = DEFAULT_VIEWS,
             temperature: float = 0.5, monitor: KnnMonitor | None = None,
             report_every: int = 100, progress: bool = False) -> tuple[nn.Module, History]:
    """Pretrain `method` on unlabelled `images` for about `steps` optimiser steps.

    With `monitor`, prints its k-NN accuracy every `report_every` steps (and records it
    in the History as `knn_acc`).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    seed_everything(seed)
    model, step = make_pretext(method, views=views, temperature=temperature)
    model.to(device)
    ds = unlabelled(images)
    batch_size = min(batch_size, len(ds))
    loader = make_loader(ds, batch_size, device, shuffle=True, seed=seed, drop_last=True)
    per_epoch = len(loader)
    epochs = max(1, round(steps / per_epoch))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    history = History()
    # One fit call per stretch between reports, sharing optimiser and schedule.
    chunk = max(1, round(report_every / per_epoch)) if monitor is not None else epochs
    done = 0
    while done < epochs:
        n = min(chunk, epochs - done)
        history.extend(fit(model, loader, epochs=n, device=device, optimizer=opt,
                           scheduler=sched, step=step, progress=progress, desc=method))
        done += n
        if monitor is not None:
            acc = monitor(model, device)
            history.add("knn_acc", acc)
            print(f"  {method} step {done * per_epoch:4d}: loss "
                  f"{history['train_loss'][-1]:.3f}, k-NN accuracy {acc:.3f}")
    model.eval()
    return model, history


def pretrained(method: str, images: torch.Tensor, device: torch.device, *, steps: int,
               data_tag: str, seed: int = 0, views: Views = DEFAULT_VIEWS, temperature: float = 0.5,
               root: Path | None = None, monitor: KnnMonitor | None = None,
               progress: bool = False) -> nn.Module:
    """`pretrain`, cached: loaded from the data cache when the same run was made before.

    `data_tag` names the images (e.g. "sample4000"); the file name records method, data,
    steps, views, temperature and seed, so a changed setting trains afresh.
    """
    extra = f"_{views.tag()}_t{temperature:g}" if method == "simclr" else ""
    name = f"selfsup_{method}_{data_tag}_st{steps}{extra}_s{seed}.pt"
    path = (data_dir() if root is None else root) / "models" / name
    model, _ = make_pretext(method, views=views, temperature=temperature)
    if path.exists():
        load_checkpoint(model, path)
        print(f"{method}: pretrained encoder loaded from {path}")
        return model.to(device).eval()
    start = time.perf_counter()
    model, _ = pretrain(method, images, device, steps=steps, seed=seed, views=views,
                        temperature=temperature, monitor=monitor, progress=progress)
    save_checkpoint(model, path)
    print(f"{method}: pretrained in {time.perf_counter() - start:.0f}s, saved to {path}")
    return model


PRETRAIN_STEPS = 600  # notebook 06's SimCLR budget in the cpu profile (about 40 s on 2 cores)
