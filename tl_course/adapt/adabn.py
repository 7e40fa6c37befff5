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


def adapt_batchnorm(model: nn.Module, target_loader: Iterable, device: torch.device) -> nn.Module:
    """Replace the BatchNorm running statistics of `model` by those of `target_loader`'s images.

    Resets the running stats, switches to a cumulative average (momentum=None) so every
    target batch counts equally, and runs forward passes in train mode without gradients.
    Only BatchNorm buffers change; the model comes back in its previous mode.
    """
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layers: AdaBN has nothing "
                         "to adapt")
    was_training = model.training
    momenta = [m.momentum for m in layers]
    model.to(device)
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all batches
    seen = 0
    try:
        model.train()
        for m in layers:  # frozen-BN bookkeeping (TransferModel.train) must not skip layers
            m.train()
        with torch.no_grad():
            for batch in target_loader:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(to_device(x, device))
                seen += 1
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    if seen == 0:
        raise ValueError("AdaBN got an empty target loader: no statistics to estimate")
    return model
