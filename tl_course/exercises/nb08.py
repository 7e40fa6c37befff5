"""Exercise checks for notebook 08 (the capstone on your own images)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .common import attempted, feedback, safely

__all__ = ["check_majority_share", "check_weakest_class"]


def check_majority_share(answer: Any, counts: Mapping[str, int]) -> bool:
    """Exercise 08.1: the share of the biggest class among all images."""
    if not attempted(answer):
        return False

    def run() -> bool:
        total = sum(counts.values())
        want = max(counts.values()) / total
        got = float(answer)
        if math.isclose(got, want, abs_tol=1e-3):
            return feedback(True, f"{want:.3f}: a model must beat this to have learnt "
                            "anything beyond the class sizes.", "")
        if math.isclose(got, 1 / len(counts), abs_tol=1e-3):
            return feedback(False, "", "that is 1 / number of classes, right only when the "
                            "classes are the same size: use the biggest class's count")
        if math.isclose(got, max(counts.values()), abs_tol=0.5):
            return feedback(False, "", "that is a count: divide by the number of images")
        return feedback(False, "", f"expected {want:.3f}: the biggest class's count divided "
                        "by all images")

    return safely(run, "majority share")


def check_weakest_class(answer: Any, per_class: Mapping[str, float]) -> bool:
    """Exercise 08.2: the class with the lowest validation accuracy."""
    if not attempted(answer):
        return False
    worst = min(per_class.values())
    if answer not in per_class:
        return feedback(False, "", f"answer with one of: {', '.join(map(repr, per_class))}")
    if math.isclose(per_class[answer], worst):
        return feedback(True, f"{answer!r} is right {worst:.0%} of the time, the lowest.", "")
    return feedback(False, "", f"{answer!r} scores {per_class[answer]:.3f}; another class "
                    "scores lower")
