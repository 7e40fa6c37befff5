"""The course's settings for each method, and one call that trains and measures a method.

The notebook shows each method step by step with these settings; the widget and
benchmarks/domain_adaptation.py call `run_method`, so all three agree.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..data import make_loader
from ..device import seed_everything
from ..domains import DomainPair
from ..models import DigitCNN
from ..train import History, StepFn, accuracy, fit
from .adabn import adapt_batchnorm
from .baselines import oracle_step, source_only_step
from .coral import coral_step
from .dann import DANN, dann_step
from .loader import PairedLoader

METHODS: tuple[str, ...] = ("source_only", "adabn", "coral", "dann", "oracle")


@dataclass(frozen=True)
class Recipe:
    """Network width, optimiser and trade-off weights shared by every method."""

    width: int = 16  # DigitCNN width: 16 keeps a cpu-profile run of all methods in minutes
    lr: float = 2e-3
    batch_size: int = 64  # per domain: a DANN step sees 2 x batch_size images
    coral_trade_off: float = 1.0
    dann_trade_off: float = 0.3
    # The adversarial game is steadier with smaller steps (Ganin et al. also anneal theirs).
    dann_lr: float = 1e-3
    disc_hidden: int = 256

    def model(self) -> DigitCNN:
        """A fresh 3-channel DigitCNN for 10 digit classes."""
        return DigitCNN(10, width=self.width, in_channels=3)

    def loaders(self, pair: DomainPair, device: torch.device,
                seed: int = 0) -> tuple[PairedLoader, torch.utils.data.DataLoader]:
        """(paired training loader, target test loader): both domains shuffled, seeded."""
        source = make_loader(pair.source.train, self.batch_size, device, shuffle=True,
                             seed=seed, drop_last=True)
        target = make_loader(pair.target.train, self.batch_size, device, shuffle=True,
                             seed=seed + 1, drop_last=True)
        return PairedLoader(source, target), make_loader(pair.target.test, 512, device)


@dataclass
class MethodResult:
    """A trained model, its accuracy on the target and source test sets, and its history."""

    method: str
    model: nn.Module
    target_acc: float
    source_acc: float
    history: History | None


def _step(method: str, recipe: Recipe, trade_off: float | None) -> StepFn:
    if method == "coral":
        return coral_step(recipe.coral_trade_off if trade_off is None else trade_off)
    if method == "dann":
        return dann_step(recipe.dann_trade_off if trade_off is None else trade_off)
    return oracle_step if method == "oracle" else source_only_step


def run_method(
    method: str,
    pair: DomainPair,
    epochs: int,
    device: torch.device,
    recipe: Recipe | None = None,
    seed: int = 0,
    trade_off: float | None = None,
    source_only: nn.Module | None = None,
    progress: bool = False,
) -> MethodResult:
    """Train one of METHODS on `pair` from a fresh seeded model; measure it on both test sets.

    adabn re-estimates BatchNorm statistics of a copy of `source_only` (a trained
    source-only model) or, when none is given, of one trained here first.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    recipe = recipe or Recipe()
    train_loader, target_test = recipe.loaders(pair, device, seed)
    source_test = make_loader(pair.source.test, 512, device)
    history = None
    if method == "adabn":
        if source_only is None:
            source_only = run_method("source_only", pair, epochs, device, recipe, seed,
                                     progress=progress).model
        model = adapt_batchnorm(copy.deepcopy(source_only), train_loader.target, device)
    else:
        seed_everything(seed)
        model = recipe.model()
        if method == "dann":
            model = DANN(model, recipe.disc_hidden)
        lr = recipe.dann_lr if method == "dann" else recipe.lr
        history = fit(model, train_loader, epochs=epochs, device=device, lr=lr,
                      step=_step(method, recipe, trade_off), progress=progress, desc=method)
    return MethodResult(method, model, accuracy(model, target_test, device),
                        accuracy(model, source_test, device), history)
