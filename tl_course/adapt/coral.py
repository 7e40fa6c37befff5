"""Deep CORAL (Sun & Saenko, 2016): align second-order statistics of source and target features.

loss = ||C_s - C_t||_F^2 / (4 d^2), with C the d x d feature covariance of each domain's
batch. It needs no extra network: the feature extractor learns to make the two
covariances match while the classifier keeps the source labels right.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..train import StepContext
from ._batch import features_and_head, unpack


def covariance(f: torch.Tensor) -> torch.Tensor:
    """Unbiased covariance (d, d) of the rows of f (n, d)."""
    centred = f - f.mean(dim=0, keepdim=True)
    return centred.T @ centred / (f.shape[0] - 1)


def coral_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """CORAL distance between source features f_s (n_s, d) and target features f_t (n_t, d)."""
    if f_s.dim() != 2 or f_t.dim() != 2:
        raise ValueError(f"CORAL needs 2-D features (n, d), got shapes {tuple(f_s.shape)} "
                         f"and {tuple(f_t.shape)}: flatten them first")
    if f_s.shape[1] != f_t.shape[1]:
        raise ValueError(f"source and target features differ in size: {f_s.shape[1]} vs "
                         f"{f_t.shape[1]}; both must come from the same feature extractor")
    if f_s.shape[0] < 2 or f_t.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 examples per domain, got "
                         f"{f_s.shape[0]} source and {f_t.shape[0]} target")
    d = f_s.shape[1]
    # float32 even under autocast: squared differences of covariances underflow in fp16.
    diff = covariance(f_s.float()) - covariance(f_t.float())
    return (diff * diff).sum() / (4 * d * d)


def coral_step(trade_off: float = 1.0) -> Callable[[nn.Module, Any, StepContext], dict[str, Any]]:
    """A fit step for Deep CORAL: cross-entropy on the source + trade_off * CORAL(f_s, f_t)."""

    def step(model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Any]:
        features, head = features_and_head(model)
        x_s, y_s, x_t = unpack(batch, ctx.device)
        # One forward pass for both domains: the BatchNorm layers see the two together.
        f = features(torch.cat([x_s, x_t]))
        f_s, f_t = f[: len(x_s)], f[len(x_s):]
        logits = head(f_s)
        cls_loss = F.cross_entropy(logits.float(), y_s)
        transfer_loss = coral_loss(f_s, f_t)
        return {
            "loss": cls_loss + trade_off * transfer_loss,
            "cls_loss": cls_loss, "coral": transfer_loss,
            "acc": (logits.argmax(1) == y_s).float().mean(), "n": y_s.shape[0],
        }

    return step
