"""Exercise checks for notebook 07 (when transfer fails)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..bias import flip_report
from ..transferability.scores import h_score
from .common import attempted, feedback, safely

__all__ = ["check_h_score", "check_flip_rate"]


def check_h_score(fn: Any) -> bool:
    """Exercise 07.1: `fn(features, labels)` computes the original H-score (Bao et al.,
    2019: sample covariances, a pseudo-inverse, no shrinkage)."""
    if not attempted(fn):
        return False
    gen = torch.Generator().manual_seed(7)

    def run() -> bool:
        for trial in range(4):
            n, d, c = 60 + 10 * trial, 4 + trial, 3 + trial % 2
            y = torch.arange(n) % c
            f = torch.randn(n, d, generator=gen, dtype=torch.float64) + y[:, None] * 0.7
            got = float(fn(f.clone(), y.clone()))
            want = h_score(f, y, shrinkage=False)
            if math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-6):
                continue
            if math.isclose(got, _uncentred(f, y), rel_tol=1e-4):
                hint = ("centre the features first (subtract their mean): a covariance is "
                        "about spread around the mean")
            elif got < 0:
                hint = "a trace of cov(f)^-1 cov(g) cannot be negative: check the inverse"
            else:
                hint = (f"trial {trial}: expected {want:.4f}, got {got:.4f}; centre f, "
                        "replace each row by its class mean (g), then "
                        "trace(pinv(cov(f)) @ cov(g)) with covariances divided by n")
            return feedback(False, "", hint)
        return feedback(True, "your H-score matches the package's (shrinkage=False) on four "
                        "random labelled sets.", "")

    return safely(run, "H-score function")


def _uncentred(f: torch.Tensor, y: torch.Tensor) -> float:
    """The H-score with second moments in place of covariances (features not centred)."""
    classes = torch.unique(y)
    g = torch.stack([f[y == c].mean(0) for c in classes])[torch.searchsorted(classes, y)]
    n = len(f)
    return float(torch.trace(torch.linalg.pinv(f.T @ f / n) @ (g.T @ g / n)))


def check_flip_rate(answer: Any, predict: Any, images: torch.Tensor, labels: torch.Tensor,
                    num_classes: int) -> bool:
    """Exercise 07.2: the share of predictions that change when the cue is pasted on."""
    if not attempted(answer):
        return False

    def run() -> bool:
        want = flip_report(predict, images, labels, num_classes)
        got = float(answer)
        if math.isclose(got, want.flip_rate, abs_tol=1e-6):
            return feedback(True, f"{got:.3f} of the predictions flip.", "")
        if math.isclose(got, 1 - want.accuracy_cued, abs_tol=1e-6):
            return feedback(False, "", "that is the error rate on cued images; a flip "
                            "compares the prediction with and without the cue, not with "
                            "the label")
        if math.isclose(got, want.flip_rate * len(images), abs_tol=0.5):
            return feedback(False, "", "that is a count: divide by the number of images")
        return feedback(False, "", f"expected {want.flip_rate:.3f}: predict the images as "
                        "they are and with `tlc.bias.paste_cue`, and take the share that differ")

    return safely(run, "flip rate")
