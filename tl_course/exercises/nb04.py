"""Exercise checks for notebook 04 (domain adaptation)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .common import attempted, feedback, safely

__all__ = ["check_coral_fn", "check_dann_schedule", "check_gap_closed", "check_reverse_grad"]


def check_reverse_grad(reverse_grad: Any) -> bool:
    """Exercise 04.1: `reverse_grad(x, lam)` is the identity forward, -lam * grad backward."""
    if not attempted(reverse_grad):
        return False

    def run() -> bool:
        gen = torch.Generator().manual_seed(0)
        for lam in (1.0, 0.25):
            x = torch.randn(4, 3, generator=gen, requires_grad=True)
            incoming = torch.randn(4, 3, generator=gen)
            y = reverse_grad(x, lam)
            if not isinstance(y, torch.Tensor) or not torch.allclose(y, x.detach()):
                return feedback(False, "", "the forward pass must return x unchanged")
            if not y.requires_grad:
                return feedback(False, "", "the output is cut off from autograd: use an "
                                "autograd.Function (or x * 1 plus a hook), not .detach()")
            y.backward(incoming)
            if x.grad is None or not torch.allclose(x.grad, -lam * incoming):
                hint = ("the gradient is unchanged: backward must return -lam * grad_output"
                        if x.grad is not None and torch.allclose(x.grad, incoming) else
                        f"for lam={lam} the gradient should be -lam times the incoming one")
                return feedback(False, "", hint)
        return feedback(True, "identity forward, gradient times -lambda backward.", "")

    return safely(run, "reverse_grad")


def check_dann_schedule(schedule: Any) -> bool:
    """Exercise 04.2: `schedule(p)` = 2 / (1 + exp(-10 p)) - 1, DANN's lambda for progress p."""
    if not attempted(schedule):
        return False

    def run() -> bool:
        for p in (0.0, 0.1, 0.25, 0.5, 1.0):
            expected = 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0
            got = float(schedule(p))
            if abs(got - expected) > 1e-6:
                hint = (f"at p={p} expected {expected:.4f}, got {got:.4f}; "
                        "lambda starts at 0 (p=0) and approaches 1 (p=1)")
                return feedback(False, "", hint)
        return feedback(True, "lambda rises smoothly from 0 to ~1 as training progresses.", "")

    return safely(run, "schedule")


def check_coral_fn(coral: Any) -> bool:
    """Exercise 04.3: `coral(f_s, f_t)` = ||C_s - C_t||_F^2 / (4 d^2), C unbiased covariances."""
    if not attempted(coral):
        return False

    def run() -> bool:
        rng = np.random.default_rng(0)
        for n_s, n_t, d in ((16, 16, 4), (20, 9, 7)):
            f_s = rng.normal(size=(n_s, d))
            f_t = rng.normal(loc=0.5, scale=1.5, size=(n_t, d))
            diff = np.cov(f_s, rowvar=False) - np.cov(f_t, rowvar=False)
            expected = float((diff**2).sum() / (4 * d * d))
            got = float(coral(torch.tensor(f_s, dtype=torch.float32),
                              torch.tensor(f_t, dtype=torch.float32)))
            if abs(got - expected) > 1e-4 * max(1.0, expected):
                ratio = got / expected if expected else float("nan")
                hint = (f"for {n_s} source / {n_t} target rows of {d} features expected "
                        f"{expected:.5f}, got {got:.5f}")
                if abs(ratio - 4 * d * d) < 1e-2 * 4 * d * d:
                    hint += ": divide by 4 d^2"
                elif abs(ratio - 1) < 0.2:
                    hint += ": centre the features and divide by n - 1 (unbiased covariance)"
                return feedback(False, "", hint)
        return feedback(True, "matches the Deep CORAL loss (checked against NumPy).", "")

    return safely(run, "coral")


def check_gap_closed(answer: Any, source_only: float, adapted: float, oracle: float) -> bool:
    """Exercise 04.4: the fraction of the source-only -> oracle gap that DANN closed."""
    if not attempted(answer):
        return False
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return feedback(False, "", f"the answer should be a number, got {answer!r}")
    if oracle == source_only:
        return feedback(False, "", "source-only and oracle are equal here: no gap to close")
    expected = (adapted - source_only) / (oracle - source_only)
    if abs(value - expected) < 5e-3:
        return feedback(True, f"DANN closed {expected:.0%} of the gap to the oracle.", "")
    if abs(value - expected * 100) < 0.5:
        return feedback(False, "", "give a fraction between 0 and 1, not a percentage")
    return feedback(False, "", "(DANN - source-only) / (oracle - source-only), from the "
                    "recorded accuracies")
