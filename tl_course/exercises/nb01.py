"""Exercise checks for notebook 01 (neural-network basics)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..models import MLP, count_parameters
from .common import attempted, feedback, safely

# ----------------------------------------------------------------- 01 neural network basics


def check_derivative(grad_at: Any) -> bool:
    """Exercise 01.1: `grad_at(f, x)` returns df/dx at the float x, computed with autograd."""
    if not attempted(grad_at):
        return False
    cases = [
        (lambda x: x**3 + 2 * x, 2.0, 14.0),
        (lambda x: torch.sin(x), 0.0, 1.0),
        (lambda x: torch.exp(2 * x), 0.5, 2 * torch.e),
    ]

    def run() -> bool:
        for f, x, expected in cases:
            got = float(grad_at(f, x))
            if not abs(got - expected) <= 1e-4:  # written so that NaN fails too
                hint = (f"for x = {x} expected {expected:.4f}, got {got:.4f}; make x a tensor "
                        "with requires_grad=True, call backward, read x.grad")
                return feedback(False, "", hint)
        return feedback(True, "grad_at matches the analytic derivatives.", "")

    return safely(run, "grad_at")


def check_mlp_parameters(answer: Any, hidden: tuple[int, ...] = (256, 128)) -> bool:
    """Exercise 01.2: the parameter count of MLP(hidden) for 28x28 inputs and 10 classes."""
    if not attempted(answer):
        return False
    expected = count_parameters(MLP(hidden=hidden))
    try:
        value = int(answer)
        whole = not isinstance(answer, float) or answer.is_integer()
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        return feedback(False, "", f"the answer should be a whole number, got {answer!r}")
    if value == expected:
        return feedback(True, f"{expected:,}: in*out weights + out biases per layer.", "")
    close = abs(value - expected) <= sum(hidden) + 10
    hint = ("close: did you count the biases (one per output unit)?" if close
            else "each Linear(in, out) has in*out weights and out biases; inputs are 28*28 = 784")
    return feedback(False, "", hint)


def check_accuracy_fn(accuracy_fn: Any) -> bool:
    """Exercise 01.3: `accuracy_fn(logits, labels)` returns the fraction of correct argmaxes."""
    if not attempted(accuracy_fn):
        return False
    gen = torch.Generator().manual_seed(0)

    def run() -> bool:
        for n, c in [(1, 3), (16, 10), (257, 5)]:
            logits = torch.randn(n, c, generator=gen)
            labels = torch.randint(0, c, (n,), generator=gen)
            expected = (logits.argmax(1) == labels).float().mean().item()
            got = float(accuracy_fn(logits, labels))
            if not abs(got - expected) <= 1e-6:  # written so that NaN fails too
                hint = ("got a value above 1: divide by the number of examples" if got > 1 else
                        f"for {n} examples of {c} classes expected {expected:.4f}, got {got:.4f}; "
                        "take argmax over dim=1 and compare with the labels")
                return feedback(False, "", hint)
        return feedback(True, "accuracy_fn agrees with the reference on every test batch.", "")

    return safely(run, "accuracy_fn")


def check_best_regulariser(answer: Any, results: Mapping[str, float]) -> bool:
    """Exercise 01.4: name the setting with the highest validation accuracy in `results`.

    Settings tied with the best (within 1e-12) are all correct answers.
    """
    if not attempted(answer):
        return False
    if not isinstance(answer, str):
        return feedback(False, "", f"answer with a name (a string), one of: {', '.join(results)}")
    top = max(float(v) for v in results.values())
    best = [k for k, v in results.items() if abs(float(v) - top) <= 1e-12]
    if answer in best:
        others = [k for k in best if k != answer]
        tie = (f", tied with {', '.join(map(repr, others))} at that value (any of them is right)"
               if others else "")
        return feedback(True, f"{answer!r} reached {top:.3f} on held-out digits{tie}.", "")
    if answer not in results:
        return feedback(False, "", f"answer with one of the keys: {', '.join(map(repr, results))}")
    return feedback(False, "", f"{answer!r} reached {results[answer]:.3f}; one did better: "
                    "read the validation accuracies in the table above")
