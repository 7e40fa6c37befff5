"""Exercise checks for notebook 02 (feature extraction)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .common import attempted, feedback, safely

__all__ = ["check_frozen_body", "check_nearest_centroid", "check_transfer_gap"]


def stats_updating_blocks(model: Any, names: Iterable[str], size: int = 28) -> list[str]:
    """Which of the blocks `names` would change their running statistics during training.

    Behavioural, like `fit`: a deep copy of `model` is put in `train()` mode and given one
    small random batch (N, C, size, size), C taken from the first convolution; a block
    counts when any of its buffers (BatchNorm running_mean / running_var /
    num_batches_tracked) differs afterwards. The learner's model and the global random
    state are left exactly as they were.
    """
    names = list(names)
    if not names:
        return []
    probe = copy.deepcopy(model)
    before = {n: [b.detach().clone() for b in probe.blocks[n].buffers()] for n in names}
    first_conv = next((m for m in probe.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first_conv.in_channels if first_conv is not None else 1
    param = next(probe.parameters())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, channels, size, size, generator=gen).to(param.device, param.dtype)
    # fit calls model.train() every epoch; dropout in train mode would draw from the
    # global generator, so fork it: checking an answer must not change later results.
    fork = (torch.random.fork_rng(devices=[]) if param.device.type == "cpu"
            else torch.random.fork_rng(devices=[param.device], device_type=param.device.type))
    with fork, torch.no_grad():
        probe.train()
        probe(x)
    return [n for n in names if not _same(before[n], list(probe.blocks[n].buffers()))]


def _same(old: list[torch.Tensor], new: list[torch.Tensor]) -> bool:
    """Exactly equal buffers; NaN equals NaN (statistics of a diverged run are not "moving")."""
    return len(old) == len(new) and all(
        a.shape == b.shape and bool(torch.isclose(a, b, rtol=0, atol=0, equal_nan=True).all())
        for a, b in zip(old, new, strict=True))


def bn_hint(changed: Sequence[str], frozen: Sequence[str], helper: str) -> str:
    """Feedback for frozen weights whose BatchNorm statistics still move in train mode."""
    names = "{" + ", ".join(map(repr, frozen)) + "}"  # block order, not set order
    return (f"the weights are frozen, but BatchNorm in {', '.join(changed)} still updates its "
            "running statistics when fit calls model.train(); set "
            f"`model.frozen_bn = {names}` (the model keeps those BatchNorm layers in "
            f"eval mode even in train mode), or read `tlc.models.{helper}` to see how the "
            "package does it")


def check_frozen_body(model: Any) -> bool:
    """Exercise 02.1: every body parameter frozen, every head parameter trainable, and the
    body's BatchNorm statistics fixed while the model trains (`model.frozen_bn`)."""
    if not attempted(model):
        return False

    def run() -> bool:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        head = {n for n, _ in model.named_parameters() if n.startswith("head.")}
        if not trainable:
            return feedback(False, "", "nothing is trainable: the new head must still learn")
        if trainable - head:
            extra = sorted(trainable - head)[:3]
            return feedback(False, "", f"body parameters still trainable, e.g. {extra}; "
                            "call requires_grad_(False) on model.blocks")
        if head - trainable:
            return feedback(False, "", "part of the head is frozen: keep model.head trainable")
        names = list(model.blocks.keys())
        changed = stats_updating_blocks(model, names)
        if changed:
            return feedback(False, "", bn_hint(changed, names, "freeze_body"))
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return feedback(True, f"only the head trains: {n:,} parameters.", "")

    return safely(run, "model")


def check_nearest_centroid(classify: Any) -> bool:
    """Exercise 02.2: classify(train_x, train_y, test_x) -> labels of the nearest class mean."""
    if not attempted(classify):
        return False
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=gen) * 3
    train_y = torch.arange(4).repeat(10)
    train_x = centres[train_y] + torch.randn(40, 16, generator=gen)
    test_x = torch.randn(50, 16, generator=gen) * 3
    means = torch.stack([train_x[train_y == c].mean(0) for c in range(4)])
    expected = torch.cdist(test_x, means).argmin(1)

    def run() -> bool:
        got = torch.as_tensor(classify(train_x, train_y, test_x)).flatten()
        if got.shape != expected.shape:
            return feedback(False, "", f"expected one label per test row ({len(expected)}), "
                            f"got shape {tuple(got.shape)}")
        agree = (got.long() == expected).float().mean().item()
        if agree < 1.0:
            return feedback(False, "", f"{agree:.0%} of labels agree with the reference: compute "
                            "one mean per class, then pick the closest mean (Euclidean)")
        return feedback(True, "nearest-centroid labels match: a probe with no training at all.", "")

    return safely(run, "classify")


def check_transfer_gap(answer: Any, results: Mapping[str, Mapping[int, Sequence[float]]],
                       k: int = 10) -> bool:
    """Exercise 02.3: mean fine-tune accuracy minus mean scratch accuracy at k labels per class."""
    if not attempted(answer):
        return False
    mean = lambda v: sum(v) / len(v)
    expected = mean(results["finetune"][k]) - mean(results["scratch"][k])
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return feedback(False, "", f"answer with a number, got {answer!r}")
    if abs(value - expected) <= 1e-6:
        return feedback(True, f"fine-tuning gains {expected:+.3f} at k={k}.", "")
    if abs(value + expected) <= 1e-6:
        return feedback(False, "", "the sign is flipped: fine-tune minus scratch")
    return feedback(False, "", f"average each method's list of seeds at k={k} first, then "
                    "subtract")
