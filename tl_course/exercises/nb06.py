"""Exercise checks for notebook 06 (self-supervised pretraining)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..selfsup.losses import nt_xent
from .common import attempted, feedback, safely

__all__ = ["check_nt_xent", "check_rotation_pair", "check_most_needed_view"]


def check_nt_xent(fn: Any) -> bool:
    """Exercise 06.1: `fn(z1, z2, temperature)` computes SimCLR's NT-Xent loss."""
    if not attempted(fn):
        return False
    gen = torch.Generator().manual_seed(6)

    def run() -> bool:
        for trial in range(5):
            n, d, t = 4 + trial, 3 + trial, [0.1, 0.5, 1.0, 0.2, 0.7][trial]
            z1, z2 = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)
            got = float(fn(z1.clone(), z2.clone(), t))
            want = float(nt_xent(z1, z2, t))
            if math.isclose(got, want, rel_tol=1e-4):
                continue
            with_self = _with_self(z1, z2, t)
            if math.isclose(got, with_self, rel_tol=1e-4):
                hint = ("an embedding must not count itself among the candidates: mask the "
                        "diagonal of the similarity matrix (set it to -inf)")
            elif math.isclose(got, _no_normalise(z1, z2, t), rel_tol=1e-4):
                hint = "use cosine similarity: normalise each embedding to length 1 first"
            elif math.isclose(got, want * 2, rel_tol=1e-4) or math.isclose(got, want / 2,
                                                                            rel_tol=1e-4):
                hint = "average over all 2N rows (both views of every image), not N"
            else:
                hint = (f"trial {trial}: expected {want:.4f}, got {got:.4f}; stack the views "
                        "(2N rows), cosine similarities / temperature, diagonal masked, "
                        "cross-entropy with row i's partner at i + N (and i - N)")
            return feedback(False, "", hint)
        return feedback(True, "your NT-Xent matches the package's on five random batches.", "")

    return safely(run, "NT-Xent function")


def _logits(z: torch.Tensor, t: float, mask_self: bool) -> torch.Tensor:
    logits = z @ z.T / t
    if mask_self:
        logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool), float("-inf"))
    return logits


def _partner(n: int) -> torch.Tensor:
    return torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])


def _with_self(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    return float(torch.nn.functional.cross_entropy(_logits(z, t, False), _partner(len(z1))))


def _no_normalise(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    z = torch.cat([z1, z2])
    return float(torch.nn.functional.cross_entropy(_logits(z, t, True), _partner(len(z1))))


def check_rotation_pair(answer: Any) -> bool:
    """Exercise 06.2: which two digits does a half turn map onto each other?"""
    if not attempted(answer):
        return False
    try:
        pair = {int(a) for a in answer}
    except (TypeError, ValueError):
        return feedback(False, "", f"answer with two digits, e.g. (1, 7); got {answer!r}")
    if pair == {6, 9}:
        return feedback(True, "a 6 turned by 180 degrees is a 9: in principle the rotation "
                        "label is ambiguous for those two (handwriting often gives it away).", "")
    return feedback(False, "", "turn a digit upside down (180 degrees): which one becomes "
                    "another digit? (0, 1 and 8 mostly stay themselves)")


def check_most_needed_view(answer: Any, drops: Mapping[str, float]) -> bool:
    """Exercise 06.3: the transformation whose removal costs the probe the most accuracy.

    `drops` maps each switched-off transformation to the probe's accuracy without it.
    """
    if not attempted(answer):
        return False
    worst = min(drops, key=drops.__getitem__)
    if answer == worst:
        return feedback(True, f"without {worst!r} the probe fell to {drops[worst]:.3f}, the "
                        "lowest of the ablation.", "")
    if not any(answer == name for name in drops):
        return feedback(False, "", f"answer with one of: {', '.join(map(repr, drops))}")
    return feedback(False, "", f"without {answer!r} the probe reached {drops[answer]:.3f}; "
                    "another removal cost more: read the ablation table")
