"""DANN (Ganin et al., 2016): domain-adversarial training through a gradient reversal layer.

A domain discriminator learns to tell source features from target features; the
gradient reversal layer between them flips its gradient, so the feature extractor
learns features the discriminator cannot separate, while the head keeps classifying
the labelled source. loss = cross-entropy(source) + trade_off * domain loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..train import StepContext
from ._batch import features_and_head, unpack
from .grl import GradientReversal, dann_lambda


class DomainDiscriminator(nn.Sequential):
    """MLP from features (n, in_features) to one logit per example: source (1) vs target (0).

    Ganin et al.'s domain classifier for digits: FC `hidden` (100) -> ReLU -> FC 1, no
    BatchNorm. In the course's runs a stronger one (wider, deeper, with BatchNorm) won the
    game too easily on a few thousand images, and its reversed gradient then spoilt the
    features.
    It returns logits, not probabilities: BCEWithLogits on logits is numerically safe,
    also under mixed precision, where a sigmoid followed by a log is not.
    """

    def __init__(self, in_features: int, hidden: int = 100):
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return super().forward(f).squeeze(1)


def domain_adversarial_loss(
    f_s: torch.Tensor, f_t: torch.Tensor, discriminator: nn.Module, grl: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE of the discriminator on reversed features, its accuracy): source=1, target=0."""
    if f_s.shape[1:] != f_t.shape[1:]:
        raise ValueError(f"source and target features differ in shape: {tuple(f_s.shape)} vs "
                         f"{tuple(f_t.shape)}")
    logits = discriminator(grl(torch.cat([f_s, f_t]))).float()
    labels = torch.cat([torch.ones(len(f_s)), torch.zeros(len(f_t))]).to(logits.device)
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    acc = ((logits > 0).float() == labels).float().mean()
    return loss, acc


class DANN(nn.Module):
    """A classifier (`backbone`, e.g. DigitCNN) plus a domain discriminator on its features.

    forward(x) gives class logits, so tlc.accuracy / evaluate work unchanged; training
    with dann_step also trains `discriminator` (both are in .parameters()).
    """

    def __init__(self, backbone: nn.Module, hidden: int = 100):
        super().__init__()
        features_and_head(backbone)  # fail early on a model without features / head
        self.backbone = backbone
        self.discriminator = DomainDiscriminator(backbone.feature_dim, hidden)
        self.grl = GradientReversal(0.0)

    @property
    def head(self) -> nn.Module:
        return self.backbone.head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def dann_terms(model: nn.Module, batch: Any, ctx: StepContext, coeff: float,
               caller: str = "dann_step") -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """DANN's forward pass on a paired batch: (terms, f_s, f_t).

    Sets the reversal strength to `coeff`, runs both domains through the features in one
    batch, and returns the source cross-entropy, the domain loss and accuracies (no
    "loss": each step combines the terms with its own weights) with the features.
    """
    if not isinstance(model, DANN):
        raise TypeError(f"{caller} trains a tlc.adapt.DANN model, got {type(model).__name__}")
    x_s, y_s, x_t = unpack(batch, ctx.device)
    model.grl.coeff = coeff
    f = model.features(torch.cat([x_s, x_t]))
    f_s, f_t = f[: len(x_s)], f[len(x_s):]
    logits = model.head(f_s)
    cls_loss = F.cross_entropy(logits.float(), y_s)
    domain_loss, domain_acc = domain_adversarial_loss(f_s, f_t, model.discriminator, model.grl)
    terms = {
        "cls_loss": cls_loss, "domain_loss": domain_loss, "domain_acc": domain_acc,
        "acc": (logits.argmax(1) == y_s).float().mean(), "n": y_s.shape[0],
    }
    return terms, f_s, f_t


def dann_step(
    trade_off: float = 1.0, schedule: bool = True
) -> Callable[[nn.Module, Any, StepContext], dict[str, Any]]:
    """A fit step for DANN: cross-entropy on the source + trade_off * domain loss.

    With `schedule`, the reversal strength follows dann_lambda(ctx.progress), 0 -> 1;
    otherwise it is 1 throughout.
    """

    def step(model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Any]:
        coeff = dann_lambda(min(ctx.progress, 1.0)) if schedule else 1.0
        terms, _, _ = dann_terms(model, batch, ctx, coeff)
        return {"loss": terms["cls_loss"] + trade_off * terms["domain_loss"], **terms}

    return step
