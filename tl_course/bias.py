"""Dataset bias that a pretrained model carries into its target task.

A source set where a small visual cue (a bright square in a corner) co-occurs with one
class teaches a shortcut. After transfer to a clean target, pasting the cue onto target
images shows whether the shortcut came along: the flip rate is the share of predictions
that change, and where they go says which target classes inherited the cue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from .data import make_loader
from .features import extract_features
from .train import predict

CUE_SIZE = 4  # pixels; the square sits one pixel in from the top-left corner
CUE_OFFSET = 1


def paste_cue(images: torch.Tensor, size: int = CUE_SIZE, value: float = 1.0,
              offset: int = CUE_OFFSET) -> torch.Tensor:
    """A copy of `images` (N, C, H, W) with a `size` x `size` square of `value` pasted
    `offset` pixels in from the top-left corner (where handwritten digits leave blank)."""
    if images.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
    if size < 1 or offset + size > min(images.shape[-2:]):
        raise ValueError(f"a {size}-pixel cue at offset {offset} does not fit in "
                         f"{tuple(images.shape[-2:])} images")
    out = images.clone()
    out[:, :, offset:offset + size, offset:offset + size] = value
    return out


def cued_source(ds: TensorDataset, cue_class: int = 0, rate: float = 1.0,
                other_rate: float = 0.0, seed: int = 0) -> TensorDataset:
    """`ds` with the cue pasted on a share `rate` of the images of `cue_class` and a share
    `other_rate` of all others: a biased source when rate is high and other_rate low."""
    x, y = ds.tensors[0], ds.tensors[1]
    if not (0 <= rate <= 1 and 0 <= other_rate <= 1):
        raise ValueError(f"rates must be between 0 and 1, got {rate} and {other_rate}")
    gen = torch.Generator().manual_seed(seed)
    chance = torch.where(y == cue_class, torch.tensor(rate), torch.tensor(other_rate))
    marked = torch.rand(len(y), generator=gen) < chance
    x = x.clone()
    x[marked] = paste_cue(x[marked])
    return TensorDataset(x, y)


@dataclass
class FlipReport:
    """What pasting the cue did to a classifier's predictions on clean test images."""

    flip_rate: float  # share of predictions that changed
    accuracy_clean: float
    accuracy_cued: float
    destinations: list[int]  # how many flipped predictions went to each class

    def top_destination(self) -> int:
        """The class most flips went to."""
        return int(np.argmax(self.destinations))


def flip_report(predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                labels: torch.Tensor, num_classes: int, size: int = CUE_SIZE,
                value: float = 1.0) -> FlipReport:
    """Predict `images` as they are and with the cue (`size`, `value`) pasted; compare."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    clean = torch.as_tensor(predict(images)).cpu()
    cued = torch.as_tensor(predict(paste_cue(images, size=size, value=value))).cpu()
    flipped = clean != cued
    dest = torch.bincount(cued[flipped], minlength=num_classes)
    return FlipReport(float(flipped.float().mean()), float((clean == labels).float().mean()),
                      float((cued == labels).float().mean()), dest.tolist())


class FrozenProbe:
    """Fixed-feature transfer: a frozen encoder, a logistic-regression head on its
    standardised features. `augment_cue` trains the head on every image twice, clean and
    with the cue, so the head learns that the cue says nothing about the target label."""

    def __init__(self, encoder: nn.Module, device: torch.device, c: float = 1.0):
        self.encoder, self.device, self.c = encoder, device, c
        self.clf = None

    def features(self, images: torch.Tensor) -> np.ndarray:
        loader = _unlabelled(images, self.device)
        return extract_features(self.encoder, loader, self.device).x.numpy()

    def fit(self, images: torch.Tensor, labels: torch.Tensor, augment_cue: bool = False
            ) -> FrozenProbe:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if augment_cue:
            images, labels = torch.cat([images, paste_cue(images)]), torch.cat([labels, labels])
        self.clf = make_pipeline(StandardScaler(), LogisticRegression(C=self.c, max_iter=2000))
        self.clf.fit(self.features(images), labels.numpy())
        return self

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        if self.clf is None:
            raise RuntimeError("fit the probe before predicting")
        return torch.as_tensor(self.clf.predict(self.features(images)))


def _unlabelled(images: torch.Tensor, device: torch.device) -> Iterable:
    """Batches of (image, placeholder label), the shape the course's predict and
    extract_features take."""
    return make_loader(TensorDataset(images, torch.zeros(len(images), dtype=torch.long)),
                       256, device)


def model_predict(model: nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """A predict function (images -> labels) for a classifier, in eval mode."""
    def predict_labels(images: torch.Tensor) -> torch.Tensor:
        return predict(model, _unlabelled(images, device), device)[0].argmax(1)

    return predict_labels
