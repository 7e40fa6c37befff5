"""A ladder of source models, from close to the target task to unrelated, and their transfer.

Every rung is the same small encoder trained on digits 0-4 after one controlled change
(rotated, colour-inverted, pixels permuted, labels shuffled); the target is digits 5-9
upright. Sources are trained once and cached (load-or-train), like the course's others.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from ..data import data_dir, make_loader
from ..device import seed_everything
from ..features import Features, extract_features
from ..train import fit, load_checkpoint, predict, save_checkpoint
from ..transfer import scramble_pixels

# The rungs, in the order of their designed distance from the target (upright digits).
RUNGS = ("upright", "rotated 30", "rotated 60", "rotated 90", "rotated 180", "inverted",
         "permuted", "shuffled labels")
RANDOM_INIT = "random init"  # no source: the baseline every rung is compared with
SOURCE_STEPS = 300  # optimiser steps per source (about 8 s each on 2 CPU cores)


def rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Images (N, C, H, W) turned by `degrees` anticlockwise about their centre
    (bilinear; corners that come from outside the image are 0)."""
    if degrees % 90 == 0:
        return torch.rot90(images, int(degrees // 90) % 4, dims=(2, 3))
    a = math.radians(degrees)
    # affine_grid maps output to input coordinates, with y pointing down the image.
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                         dtype=images.dtype).expand(len(images), 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False)


def transform(rung: str, ds: TensorDataset, seed: int = 0) -> TensorDataset:
    """The source data of one rung: `ds` (images, labels) after that rung's change.

    "permuted" uses one fixed pixel permutation (seed 0, the same for every run), and
    "shuffled labels" a fixed shuffle of the labels, so a rung is one source task.
    """
    x, y = ds.tensors[0], ds.tensors[1]
    if rung == "upright":
        return TensorDataset(x, y)
    if rung.startswith("rotated "):
        return TensorDataset(rotate(x, float(rung.split()[1])), y)
    if rung == "inverted":
        return TensorDataset(1.0 - x, y)
    if rung == "permuted":
        return scramble_pixels(ds, seed=0)
    if rung == "shuffled labels":
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        return TensorDataset(x, y[perm])
    raise ValueError(f"unknown rung {rung!r}; choose one of {', '.join(RUNGS)}")


def new_encoder(num_classes: int = 5, seed: int = 0) -> nn.Module:
    """A fresh conv32-conv64-fc128 encoder (notebook 06's DigitEncoder), seeded."""
    from ..selfsup.pretext import DigitEncoder

    seed_everything(seed)
    return DigitEncoder(num_classes=num_classes)


def train_on(data: TensorDataset, device: torch.device, *, steps: int = SOURCE_STEPS,
             seed: int = 0, batch_size: int = 128, lr: float = 3e-3) -> nn.Module:
    """A fresh encoder with a head for `data`'s classes, trained for about `steps` steps."""
    model = new_encoder(int(data.tensors[1].max()) + 1, seed).to(device)
    loader = make_loader(data, batch_size, device, shuffle=True, seed=seed)
    epochs = max(1, round(steps / len(loader)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs)
    fit(model, loader, epochs=epochs, device=device, optimizer=opt, scheduler=sched,
        progress=False)
    return model.eval()


def train_source(rung: str, train: TensorDataset, device: torch.device, *,
                 steps: int = SOURCE_STEPS, seed: int = 0) -> nn.Module:
    """An encoder with a 5-class head trained on one rung's source data."""
    return train_on(transform(rung, train, seed=seed), device, steps=steps, seed=seed)


def cached_source(name: str, data: TensorDataset, device: torch.device, *, data_tag: str,
                  steps: int = SOURCE_STEPS, seed: int = 0, root: Path | None = None
                  ) -> nn.Module:
    """An encoder trained on `data` (already transformed), loaded from the data cache when
    it was trained before; the file name records `name`, data, steps and seed."""
    path = ((data_dir() if root is None else root) / "models"
            / f"{name.replace(' ', '')}_{data_tag}_st{steps}_s{seed}.pt")
    if path.exists():
        model = new_encoder(int(data.tensors[1].max()) + 1, seed)
        load_checkpoint(model, path)
        return model.to(device).eval()
    start = time.perf_counter()
    model = train_on(data, device, steps=steps, seed=seed)
    save_checkpoint(model, path)
    print(f"  source '{name}' trained in {time.perf_counter() - start:.1f}s, saved")
    return model


def ladder_sources(train: TensorDataset, device: torch.device, *, data_tag: str,
                   rungs: Sequence[str] = RUNGS, steps: int = SOURCE_STEPS, seed: int = 0,
                   root: Path | None = None) -> dict[str, nn.Module]:
    """One trained source per rung (cached, see `cached_source`)."""
    return {rung: cached_source(f"ladder_{rung}", transform(rung, train, seed=seed), device,
                                data_tag=data_tag, steps=steps, seed=seed, root=root)
            for rung in rungs}


def features_of(model: nn.Module, ds: TensorDataset, device: torch.device) -> Features:
    """The encoder's 128-d features of a labelled dataset (eval mode)."""
    return extract_features(model, make_loader(ds, 256, device), device)


def source_probs(model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The source head's softmax on `images` (what LEEP reads), in eval mode."""
    dummy = torch.zeros(len(images), dtype=torch.long)
    logits, _ = predict(model, make_loader(TensorDataset(images, dummy), 256, device), device)
    return F.softmax(logits, 1)
