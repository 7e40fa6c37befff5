"""AdaBN (Li et al., 2016): re-estimate BatchNorm statistics on the target domain.

The weights learnt on the source stay as they are; only each BatchNorm layer's running
mean and variance are recomputed from target images, so every layer normalises the
target's activations with the target's own statistics. No labels, no training.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..device import to_device


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of `model`."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class _Reached(Exception):
    """Raised by a hook to stop a forward pass once the layer being measured has its input."""


def _images(batch: object) -> object:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _call_order(model: nn.Module, layers: list[nn.modules.batchnorm._BatchNorm],
                x: torch.Tensor) -> list[tuple[nn.modules.batchnorm._BatchNorm, int]]:
    """The BatchNorm layers in the order one forward pass reaches them, with call counts."""
    calls: dict[int, int] = {}
    order: list[nn.modules.batchnorm._BatchNorm] = []

    def record(module: nn.Module, _inputs: tuple) -> None:
        if id(module) not in calls:
            order.append(module)  # type: ignore[arg-type]
        calls[id(module)] = calls.get(id(module), 0) + 1

    handles = [m.register_forward_pre_hook(record) for m in layers]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return [(m, calls[id(m)]) for m in order]


def _input_statistics(model: nn.Module, layer: nn.modules.batchnorm._BatchNorm, calls: int,
                      target_loader: Iterable, device: torch.device
                      ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, unbiased variance, batches) of `layer`'s input over the whole target set.

    Per-batch means and sums of squared deviations are merged exactly (Chan et al.'s
    pairwise formula, in float64), so the result does not depend on how the loader
    groups or orders the images. The forward pass stops once `layer` has its input.
    """
    count, mean, m2 = 0, None, None
    seen_in_pass = 0

    def measure(_module: nn.Module, inputs: tuple) -> None:
        nonlocal count, mean, m2, seen_in_pass
        h = inputs[0].detach().float()
        dims = [0] + list(range(2, h.dim()))
        n_b = h.numel() // h.shape[1]
        mean_b = h.mean(dim=dims)
        shape = [1, -1] + [1] * (h.dim() - 2)
        m2_b = ((h - mean_b.view(shape)) ** 2).sum(dim=dims)
        mean_b, m2_b = mean_b.double().cpu(), m2_b.double().cpu()
        if mean is None:
            count, mean, m2 = n_b, mean_b, m2_b
        else:
            total = count + n_b
            delta = mean_b - mean
            mean = mean + delta * (n_b / total)
            m2 = m2 + m2_b + delta * delta * (count * n_b / total)
            count = total
        seen_in_pass += 1
        if seen_in_pass == calls:
            raise _Reached

    batches = 0
    handle = layer.register_forward_pre_hook(measure)
    try:
        for batch in target_loader:
            seen_in_pass = 0
            try:
                model(to_device(_images(batch), device))
            except _Reached:
                pass
            batches += 1
    finally:
        handle.remove()
    if mean is None or m2 is None:
        raise ValueError("AdaBN got an empty target loader: no statistics to estimate")
    if count < 2:
        raise ValueError("AdaBN needs at least 2 values per channel to estimate a variance")
    return mean, m2 / (count - 1), batches


def adapt_batchnorm(model: nn.Module, target_loader: Iterable, device: torch.device) -> nn.Module:
    """Replace the BatchNorm running statistics of `model` by those of `target_loader`'s images.

    Exact statistics, layer by layer, as in Li et al.: for each BatchNorm layer, in the
    order the forward pass reaches them, running_mean and running_var become the mean and
    the *unbiased* variance of that layer's input over the whole target set, computed
    with every earlier BatchNorm layer already normalising by the target's statistics
    (the model runs in eval mode, so dropout is off and nothing else changes). Nothing
    of the source statistics is left, and the result does not depend on the batch size
    or on the order of the loader (a class-sorted loader gives the same buffers as a
    shuffled one). This costs one pass over the target per BatchNorm layer (each pass
    stops at the layer it measures), so `target_loader` must be re-iterable (a
    DataLoader or a list), and deterministic for the statistics to be exact.

    Only BatchNorm buffers change; momentum and every module's train/eval mode come back
    as they were. Layers that the forward pass never reaches are reset.
    """
    layers = [m for m in batchnorm_layers(model) if m.track_running_stats]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layers: AdaBN has nothing "
                         "to adapt")
    if iter(target_loader) is target_loader:
        raise TypeError("AdaBN reads the target images once per BatchNorm layer: pass a "
                        "DataLoader or a list of batches, not an iterator or generator")
    model.to(device)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            first = next(iter(target_loader), None)
            if first is None:
                raise ValueError("AdaBN got an empty target loader: no statistics to estimate")
            for m in layers:
                m.reset_running_stats()
            order = _call_order(model, layers, to_device(_images(first), device))
            for layer, calls in order:
                mean, var, batches = _input_statistics(model, layer, calls, target_loader,
                                                       device)
                layer.running_mean.copy_(mean.to(layer.running_mean.dtype))
                layer.running_var.copy_(var.to(layer.running_var.dtype))
                layer.num_batches_tracked.fill_(batches)
    finally:
        for m, training in modes:
            m.training = training
    return model
