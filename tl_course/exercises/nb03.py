"""Exercise checks for notebook 03 (fine-tuning)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .common import attempted, feedback, safely
from .nb02 import bn_hint, stats_updating_blocks

__all__ = ["check_last_block_only", "check_discriminative_groups", "check_negative_transfer"]


def check_last_block_only(model: Any) -> bool:
    """Exercise 03.1: only the last block of model.blocks and the head are trainable, and the
    frozen blocks' BatchNorm statistics stay fixed while the model trains."""
    if not attempted(model):
        return False

    def run() -> bool:
        names = list(model.blocks.keys())
        trainable = [n for n, b in model.blocks.items()
                     if any(p.requires_grad for p in b.parameters())]
        head_ok = all(p.requires_grad for p in model.head.parameters())
        if trainable != names[-1:]:
            return feedback(False, "", f"trainable blocks are {trainable}; want only "
                            f"{names[-1:]} (freeze the others with requires_grad_(False))")
        if not head_ok:
            return feedback(False, "", "the head must stay trainable")
        changed = stats_updating_blocks(model, names[:-1])
        if changed:
            return feedback(False, "", bn_hint(changed, names[:-1], "unfreeze_from"))
        return feedback(True, f"{names[-1]} and the head train; {names[:-1]} stay fixed.", "")

    return safely(run, "model")


def check_discriminative_groups(groups: Any, model: Any, lr: float = 1e-3,
                                decay: float = 0.5) -> bool:
    """Exercise 03.2: optimizer groups where the head has lr and each earlier block
    `decay` times the learning rate of the block after it."""
    if not attempted(groups):
        return False

    def run() -> bool:
        # Materialise first: params may be generators (model.parameters()), read twice below.
        materialised = [{**g, "params": list(g["params"])} for g in groups]
        ids = [id(p) for g in materialised for p in g["params"]]
        if len(ids) != len(set(ids)):
            return feedback(False, "", "every parameter of the head and of every block must be "
                            "in exactly one group (one appears twice)")
        by_param = {}
        for g in materialised:
            for p in g["params"]:
                by_param[id(p)] = g["lr"]
        expected = {id(p): lr for p in model.head.parameters()}
        for depth, block in enumerate(reversed(list(model.blocks.values())), start=1):
            expected.update({id(p): lr * decay**depth for p in block.parameters()})
        if set(by_param) != set(expected):
            return feedback(False, "", "every parameter of the head and of every block must be "
                            "in exactly one group")
        wrong = [v for k, v in by_param.items() if abs(v - expected[k]) > 1e-12]
        if wrong:
            return feedback(False, "", "some learning rates are off: the head gets lr, the last "
                            "block lr*decay, the one before lr*decay**2, ...")
        return feedback(True, "each earlier block learns more slowly: general features move "
                        "least.", "")

    return safely(run, "groups")


def check_negative_transfer(answer: Any, accuracies: Mapping[str, float]) -> bool:
    """Exercise 03.3: name the start point that did worse than training from scratch."""
    if not attempted(answer):
        return False
    worse = [name for name, acc in accuracies.items()
             if name != "scratch" and acc < accuracies["scratch"]]
    if not isinstance(answer, str) or (answer not in accuracies and answer != "none"):
        return feedback(False, "", f"answer with one of: {', '.join(accuracies)}, or 'none'")
    if not worse:
        return feedback(answer == "none", "on this run no start point fell below scratch.",
                        "on this run nothing did worse than scratch: answer 'none'")
    if answer in worse:
        gap = accuracies["scratch"] - accuracies[answer]
        verdict = ("negative transfer on this run" if gap > 0.02 else
                   "a gap this small (under 2 points) may be noise: a lost gain, not clear "
                   "negative transfer")
        return feedback(True, f"{answer!r} ({accuracies[answer]:.3f}) is below scratch "
                        f"({accuracies['scratch']:.3f}): {verdict}.", "")
    return feedback(False, "", f"{answer!r} is not below scratch ({accuracies['scratch']:.3f}) "
                    "on this run: which start point fell below it?")
