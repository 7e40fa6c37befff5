"""Exercise checks for notebook 05 (multi-task learning)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..models import count_parameters
from .common import attempted, feedback, safely

__all__ = ["check_param_ratio", "check_pcgrad_projection", "check_turned_down"]


def check_param_ratio(answer: Any, shared: nn.Module, singles: Iterable[nn.Module]) -> bool:
    """Exercise 05.1: parameters of the shared model / sum over the single-task models."""
    if not attempted(answer):
        return False
    singles = list(singles)
    expected = count_parameters(shared) / sum(count_parameters(m) for m in singles)
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return feedback(False, "", f"the answer should be a number, got {answer!r}")
    if abs(value - expected) <= 1e-3:
        return feedback(True, f"{expected:.3f}: one trunk instead of {len(singles)}, "
                        "and the heads are small.", "")
    if abs(value - 1 / expected) <= 1e-3:
        return feedback(False, "", "that is the inverse: divide the shared model's count by "
                        "the single-task models' total")
    return feedback(False, "", f"expected about {expected:.3f}; use tlc.count_parameters on "
                    "the shared model and on each single-task model")


def check_pcgrad_projection(project: Any) -> bool:
    """Exercise 05.2: `project(g1, g2)` removes from g1 its component along g2 when they
    conflict (g1 . g2 < 0) and returns g1 unchanged otherwise."""
    if not attempted(project):
        return False
    gen = torch.Generator().manual_seed(5)

    def run() -> bool:
        for trial in range(20):
            g1, g2 = torch.randn(7, generator=gen), torch.randn(7, generator=gen)
            dot = g1 @ g2
            expected = g1 - dot / (g2 @ g2) * g2 if dot < 0 else g1
            got = torch.as_tensor(project(g1.clone(), g2.clone()), dtype=torch.float32)
            if got.shape != g1.shape or not torch.allclose(got, expected, atol=1e-5):
                if dot >= 0:
                    hint = ("for gradients that agree (g1 . g2 >= 0) return g1 unchanged")
                elif torch.allclose(got @ g2, torch.zeros(()), atol=1e-4):
                    hint = "orthogonal to g2, but not the projection: subtract only along g2"
                else:
                    hint = ("when g1 . g2 < 0, subtract (g1 . g2) / |g2|^2 * g2 from g1; the "
                            "result should have zero inner product with g2")
                return feedback(False, "", f"trial {trial}: {hint}")
        return feedback(True, "conflicting gradients lose exactly their component along the "
                        "other task's gradient; agreeing ones pass unchanged.", "")

    return safely(run, "project")


def check_turned_down(answer: Any, weights: Mapping[str, float]) -> bool:
    """Exercise 05.3: name the task uncertainty weighting gave the smallest weight."""
    if not attempted(answer):
        return False
    lowest = min(weights, key=weights.__getitem__)
    if answer == lowest:
        return feedback(True, f"{lowest!r} ended with weight {weights[lowest]:.2f}: its loss "
                        "stays high, so its learned variance grows and its weight shrinks.", "")
    if not any(answer == task for task in weights):  # not `in`: the answer may be unhashable
        return feedback(False, "", f"answer with one of: {', '.join(map(repr, weights))}")
    return feedback(False, "", f"{answer!r} ended with weight {weights[answer]:.2f}; another "
                    "task ended lower: read the learned weights printed above")
