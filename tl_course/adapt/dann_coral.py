"""DANN + Deep CORAL: adversarial alignment and covariance alignment in one loss.

The two aligners look at different things. DANN's discriminator pushes the features
until a small network cannot tell the domains apart, which it can reach while the
feature *covariances* still differ; CORAL matches those second-order statistics
directly, with no adversary to balance. Together (the course's "improved" method of
notebook 04, chosen on labelled target validation images over self-training, entropy
minimisation, MCC and CDAN, see benchmarks/domain_adaptation.py):

loss = cross-entropy(source) + trade_off * domain loss + coral_trade_off * CORAL(f_s, f_t)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..train import StepContext
from ._batch import unpack
from .coral import coral_loss
from .dann import DANN, domain_adversarial_loss
from .grl import dann_lambda


def dann_coral_step(
    trade_off: float = 1.0, coral_trade_off: float = 3000.0
) -> Callable[[nn.Module, Any, StepContext], dict[str, Any]]:
    """A fit step for a tlc.adapt.DANN model with an added CORAL term on the same features.

    The reversal strength follows DANN's schedule, dann_lambda(ctx.progress); the CORAL
    weight is constant (thousands, because the term is divided by 4 d^2, see coral_loss).
    """

    def step(model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Any]:
        if not isinstance(model, DANN):
            raise TypeError(f"dann_coral_step trains a tlc.adapt.DANN model, got "
                            f"{type(model).__name__}")
        x_s, y_s, x_t = unpack(batch, ctx.device)
        model.grl.coeff = dann_lambda(min(ctx.progress, 1.0))
        f = model.features(torch.cat([x_s, x_t]))
        f_s, f_t = f[: len(x_s)], f[len(x_s):]
        logits = model.head(f_s)
        cls_loss = F.cross_entropy(logits.float(), y_s)
        domain_loss, domain_acc = domain_adversarial_loss(f_s, f_t, model.discriminator,
                                                          model.grl)
        coral = coral_loss(f_s, f_t)
        return {
            "loss": cls_loss + trade_off * domain_loss + coral_trade_off * coral,
            "cls_loss": cls_loss, "domain_loss": domain_loss, "domain_acc": domain_acc,
            "coral": coral,
            "acc": (logits.argmax(1) == y_s).float().mean(), "n": y_s.shape[0],
        }

    return step
