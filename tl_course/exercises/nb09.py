"""Exercise checks for notebook 09 (transfer in text)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .common import attempted, feedback, safely

__all__ = ["check_balanced_accuracy", "check_weat_effect_size"]


def check_balanced_accuracy(fn: Any) -> bool:
    """Exercise 09.1: `fn(y_true, y_pred)` is the mean over classes of each class's recall."""
    if not attempted(fn):
        return False
    from ..text.probes import balanced_accuracy

    cases = [  # the first tells recall, precision and accuracy apart
        (np.array([0] * 8 + [1] * 2), np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 0])),
        (np.array([0] * 8 + [1] * 2), np.zeros(10, dtype=int)),
        (np.array([1, 1, 1, 0, 0, 2, 2, 2, 2, 2]), np.array([1, 0, 1, 0, 2, 2, 2, 1, 2, 2])),
    ]

    def run() -> bool:
        for y, p in cases:
            got, want = float(fn(y.copy(), p.copy())), balanced_accuracy(y, p)
            if math.isclose(got, want, abs_tol=1e-9):
                continue
            if math.isclose(got, float(np.mean(y == p)), abs_tol=1e-9):
                hint = ("that is plain accuracy: compute the recall of each class (the share "
                        "of its words predicted right), then average over the classes")
            elif math.isclose(got, _mean_precision(y, p), abs_tol=1e-9):
                hint = ("you averaged over the predicted classes (precision); divide by the "
                        "number of words that truly are in each class instead")
            else:
                hint = (f"expected {want:.4f}, got {got:.4f}, for labels {y.tolist()} and "
                        f"predictions {p.tolist()}")
            return feedback(False, "", hint)
        return feedback(True, "always answering 'negative' scores 0.5, however many negative "
                        "words there are.", "")

    return safely(run, "balanced accuracy")


def _mean_precision(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean([np.mean(y[p == c] == c) for c in np.unique(y) if np.any(p == c)]))


def check_weat_effect_size(fn: Any) -> bool:
    """Exercise 09.2: `fn(x, y, a, b)` (arrays of vectors, one row per word) is Caliskan et
    al.'s effect size d."""
    if not attempted(fn):
        return False
    from ..text.weat import associations, effect_size

    rng = np.random.default_rng(9)

    def run() -> bool:
        for trial in range(3):
            d = 5 + trial
            a, b = rng.standard_normal((6, d)) + 1, rng.standard_normal((5, d)) - 1
            x = rng.standard_normal((7, d)) * (1 + trial) + 0.4 * a.mean(0)
            y = rng.standard_normal((7, d)) + 0.4 * b.mean(0)
            got, want = float(fn(x.copy(), y.copy(), a.copy(), b.copy())), effect_size(x, y, a, b)
            if math.isclose(got, want, rel_tol=1e-6):
                continue
            sx, sy = associations(x, a, b), associations(y, a, b)
            pooled = np.concatenate([sx, sy])
            if math.isclose(got, (sx.mean() - sy.mean()) / pooled.std(), rel_tol=1e-6):
                hint = ("the paper divides by the sample standard deviation (n - 1): "
                        "np.std(..., ddof=1) or statistics.stdev")
            elif math.isclose(got, -want, rel_tol=1e-6):
                hint = "the sign is flipped: X's mean association minus Y's, s = cos(A) - cos(B)"
            elif math.isclose(got, _dot_d(x, y, a, b), rel_tol=1e-6):
                hint = ("use cosine similarity (divide by both vectors' lengths), not the dot "
                        "product")
            else:
                hint = (f"trial {trial}: expected {want:.4f}, got {got:.4f}; s(w) = mean cos(w, "
                        "A) - mean cos(w, B), then d = (mean s over X - mean s over Y) / "
                        "std of s over X and Y together")
            return feedback(False, "", hint)
        return feedback(True, "your d matches the package's on three random sets.", "")

    return safely(run, "effect size function")


def _dot_d(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    s = lambda w: (w @ a.T).mean(1) - (w @ b.T).mean(1)
    sx, sy = s(x), s(y)
    return float((sx.mean() - sy.mean()) / np.concatenate([sx, sy]).std(ddof=1))
