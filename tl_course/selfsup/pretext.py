"""Three ways to pretrain a DigitCNN encoder without labels, each a model + a `fit` step.

- "simclr": two views of each image, a projection head, NT-Xent (Chen et al., 2020);
- "autoencoder": reconstruct the image from the encoder's 128 numbers (optionally from a
  noisy copy: a denoising autoencoder, Vincent et al., 2008);
- "rotation": predict which of 0 / 90 / 180 / 270 degrees the image was turned by
  (Gidaris et al., 2018).

All keep the encoder as `model.encoder` (a `DigitEncoder`), so every method is probed the
same way, and a random-initialised `DigitEncoder` is the baseline each must beat.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..device import to_device
from ..models import TransferModel
from ..train import StepContext
from .losses import nt_xent_stacked, rotate_batch
from .views import DEFAULT_VIEWS, Views, augment

METHODS = ("simclr", "autoencoder", "denoising", "rotation")


class DigitEncoder(TransferModel):
    """conv32 (stride 2) -> conv64 (stride 2) -> fc128: a small encoder for 28x28 digits.

    Strided convolutions instead of DigitCNN's pooled pairs: about 7 times fewer
    multiply-adds, so pretraining takes well under a minute on a laptop CPU.
    `features(x)` is the 128-d embedding; `head` a linear classifier on it.
    """

    def __init__(self, num_classes: int = 10, width: int = 32):
        def block(c_in: int, c_out: int) -> nn.Sequential:  # halves height and width
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                                 nn.BatchNorm2d(c_out), nn.ReLU())

        blocks = [("block1", block(1, width)), ("block2", block(width, 2 * width))]
        pool = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 7 * 7, 128), nn.ReLU())
        super().__init__(blocks, pool, 128, num_classes)


def _images(batch: Any, device: torch.device) -> torch.Tensor:
    """Unlabelled batches are (images,) tuples; a labelled one would be refused upstream."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return to_device(x, device)


class SimCLRNet(nn.Module):
    """Encoder -> 128 features -> projection head (MLP) -> 64-d embedding for the loss.

    The loss sees only the projection; the probe uses the features before it, which keep
    more of what the augmentations remove (SimCLR's finding, and ours in notebook 06).
    """

    def __init__(self, width: int = 32, proj_dim: int = 64):
        super().__init__()
        self.encoder = DigitEncoder(width=width)
        d = self.encoder.feature_dim
        self.projector = nn.Sequential(nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU(),
                                       nn.Linear(d, proj_dim))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder.features(x))


class AutoEncoderNet(nn.Module):
    """Encoder -> 128 features -> decoder back to a 28x28 image in [0, 1]."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.encoder = DigitEncoder(width=width)
        d = self.encoder.feature_dim
        self.decoder = nn.Sequential(
            nn.Linear(d, 64 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (64, 7, 7)),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),  # 7 -> 14
            nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1), nn.Sigmoid(),  # 14 -> 28
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder.features(x))


class RotationNet(nn.Module):
    """Encoder -> 128 features -> 4-way head: which quarter turn was applied."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.encoder = DigitEncoder(width=width)
        self.head = nn.Linear(self.encoder.feature_dim, 4)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.features(x))


class SimCLRStep:
    """`fit` step: two views of the batch in one forward pass, NT-Xent on the projections.

    Also reports how often an image's partner view is its most similar embedding
    (`pair_acc`): a label-free sign that the task is being learnt.
    """

    def __init__(self, views: Views = DEFAULT_VIEWS, temperature: float = 0.5):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.views, self.temperature = views, temperature

    def __call__(self, model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Any]:
        x = _images(batch, ctx.device)
        n = x.shape[0]
        z = model(augment(torch.cat([x, x]), self.views))  # rows i and i + n: image i
        loss = nt_xent_stacked(z, self.temperature)
        with torch.no_grad():
            zn = F.normalize(z.float(), dim=1)
            sim = (zn @ zn.T).fill_diagonal_(-2.0)
            partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(x.device)
            pair_acc = (sim.argmax(1) == partner).float().mean()
        return {"loss": loss, "pair_acc": pair_acc, "n": n}


class AutoEncoderStep:
    """`fit` step: mean squared reconstruction error of the clean image (from a noisy input
    when `noise` > 0: the denoising autoencoder)."""

    def __init__(self, noise: float = 0.0):
        self.noise = noise

    def __call__(self, model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Any]:
        x = _images(batch, ctx.device)
        inp = (x + self.noise * torch.randn_like(x)).clamp(0, 1) if self.noise > 0 else x
        loss = F.mse_loss(model(inp).float(), x.float())
        return {"loss": loss, "n": x.shape[0]}


class RotationStep:
    """`fit` step: each image turned by a random quarter turn; cross-entropy on which."""

    def __call__(self, model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Any]:
        x = _images(batch, ctx.device)
        turns = torch.randint(0, 4, (x.shape[0],), device=x.device)
        logits = model(rotate_batch(x, turns))
        loss = F.cross_entropy(logits.float(), turns)
        acc = (logits.argmax(1) == turns).float().mean()
        return {"loss": loss, "acc": acc, "n": x.shape[0]}


def make_pretext(method: str, views: Views = DEFAULT_VIEWS, temperature: float = 0.5,
                 noise: float = 0.3) -> tuple[nn.Module, Any]:
    """A fresh model and its `fit` step for `method` (one of METHODS)."""
    if method == "simclr":
        return SimCLRNet(), SimCLRStep(views, temperature)
    if method == "autoencoder":
        return AutoEncoderNet(), AutoEncoderStep(noise=0.0)
    if method == "denoising":
        return AutoEncoderNet(), AutoEncoderStep(noise=noise)
    if method == "rotation":
        return RotationNet(), RotationStep()
    raise ValueError(f"unknown pretraining method {method!r}; one of {', '.join(METHODS)}")
