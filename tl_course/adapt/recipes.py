"""The course's settings for each method, and one call that trains and measures a method.

The notebook shows each method step by step with these settings; the widget and
benchmarks/domain_adaptation.py call `run_method`, so all three agree.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data import make_loader
from ..device import seed_everything
from ..domains import DomainPair
from ..profile import Profile
from ..train import History, StepFn, accuracy, fit
from .adabn import adapt_batchnorm
from .baselines import oracle_step, source_only_step
from .coral import coral_step
from .dann import DANN, dann_step
from .loader import PairedLoader
from .nets import GaninCNN

METHODS: tuple[str, ...] = ("source_only", "adabn", "coral", "dann", "oracle")


@dataclass(frozen=True)
class Recipe:
    """Network, optimiser, epochs and trade-off weights shared by every method.

    Following Ganin et al. (2016): their MNIST network (GaninCNN, without BatchNorm as in
    the paper; AdaBN uses the same network with BatchNorm, see run_method), SGD with
    momentum 0.9 and the learning rate
    annealed as lr / (1 + 10 p)^0.75 (p: training progress, here stepped once per epoch),
    batches of half source, half target, and a FC 100 -> 1 domain classifier.
    """

    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 64  # per domain: a paired step sees 2 x batch_size images
    epoch_factor: float = 4.0  # epochs = 4 x the profile's: DANN needs many small steps
    # BatchNorm off: with it, DANN gained less over source-only in our runs (the shared
    # statistics mix the two domains); AdaBN switches it on for its own network.
    batchnorm: bool = False
    coral_trade_off: float = 1.0
    dann_trade_off: float = 1.0
    disc_hidden: int = 100

    def model(self) -> GaninCNN:
        """A fresh 3-channel GaninCNN for 10 digit classes."""
        return GaninCNN(10, in_channels=3, batchnorm=self.batchnorm)

    def epochs(self, profile: Profile) -> int:
        """Training epochs for `profile` (the same for every method)."""
        return profile.scaled_epochs(self.epoch_factor)

    def optimizer(self, model: nn.Module, epochs: int) -> tuple[torch.optim.Optimizer, Any]:
        """(SGD with momentum, its annealing schedule) for `epochs`; pass both to tlc.fit."""
        opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda epoch: 1.0 / (1.0 + 10.0 * epoch / epochs) ** 0.75)
        return opt, sched

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
        if source_only is None:  # AdaBN needs BatchNorm: the same network with it switched on
            bn_recipe = dataclasses.replace(recipe, batchnorm=True)
            source_only = run_method("source_only", pair, epochs, device, bn_recipe, seed,
                                     progress=progress).model
        model = adapt_batchnorm(copy.deepcopy(source_only), train_loader.target, device)
    else:
        seed_everything(seed)
        model = recipe.model()
        if method == "dann":
            model = DANN(model, recipe.disc_hidden)
        optimizer, scheduler = recipe.optimizer(model, epochs)
        history = fit(model, train_loader, epochs=epochs, device=device, optimizer=optimizer,
                      scheduler=scheduler, step=_step(method, recipe, trade_off),
                      progress=progress, desc=method)
    return MethodResult(method, model, accuracy(model, target_test, device),
                        accuracy(model, source_test, device), history)
