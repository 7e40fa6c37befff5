"""The gradient reversal layer (Ganin & Lempitsky, 2015) and DANN's schedule for its weight.

Forward it is the identity; backward it multiplies the incoming gradient by -lambda.
Put between a feature extractor and a domain discriminator, it makes one backward pass
train the discriminator to tell the domains apart and the features to fool it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class GradientReverseFunction(torch.autograd.Function):
    """y = x forward; dL/dx = -coeff * dL/dy backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
        ctx.coeff = float(coeff)
        # A new tensor, not x or a view of it: autograd forbids in-place ops (an in-place
        # ReLU in a discriminator) on a view made inside a custom Function.
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coeff * grad_output, None  # no gradient for coeff


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity on `x` whose backward pass multiplies gradients by -coeff."""
    return GradientReverseFunction.apply(x, coeff)


class GradientReversal(nn.Module):
    """Module form of grad_reverse; set `.coeff` (lambda) as training goes on."""

    def __init__(self, coeff: float = 1.0):
        super().__init__()
        self.coeff = coeff

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.coeff)

    def extra_repr(self) -> str:
        return f"coeff={self.coeff:g}"


def dann_lambda(progress: float, gamma: float = 10.0, high: float = 1.0) -> float:
    """DANN's schedule: high * (2 / (1 + exp(-gamma * p)) - 1), from 0 at p=0 to ~high at p=1.

    Starting near 0 keeps the discriminator's noisy early gradients away from the features
    while they are still random.
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be between 0 and 1, got {progress}")
    return high * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0)
