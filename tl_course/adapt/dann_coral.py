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

from torch import nn

from ..train import StepContext
from .coral import coral_loss
from .dann import dann_terms
from .grl import dann_lambda


def dann_coral_step(
    trade_off: float = 1.0, coral_trade_off: float = 3000.0
) -> Callable[[nn.Module, Any, StepContext], dict[str, Any]]:
    """A fit step for a tlc.adapt.DANN model with an added CORAL term on the same features.

    The reversal strength follows DANN's schedule, dann_lambda(ctx.progress); the CORAL
    weight is constant (thousands, because the term is divided by 4 d^2, see coral_loss).
    """

    def step(model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Any]:
        terms, f_s, f_t = dann_terms(model, batch, ctx, dann_lambda(min(ctx.progress, 1.0)),
                                     caller="dann_coral_step")
        coral = coral_loss(f_s, f_t)
        loss = terms["cls_loss"] + trade_off * terms["domain_loss"] + coral_trade_off * coral
        return {"loss": loss, "coral": coral, **terms}

    return step
