"""Unpacking the (source_batch, target_batch) pairs that PairedLoader yields."""

from __future__ import annotations

from typing import Any

import torch

from ..device import to_device


def unpack(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_s, y_s, x_t) on `device`; target labels, if present, are dropped (never trained on)."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(
            "a domain-adaptation step needs (source_batch, target_batch) pairs: wrap the two "
            "loaders in tlc.adapt.PairedLoader(source_loader, target_loader)"
        )
    (x_s, y_s), target = batch
    x_t = target[0] if isinstance(target, (tuple, list)) else target
    return to_device(x_s, device), to_device(y_s, device), to_device(x_t, device)


def features_and_head(model: torch.nn.Module) -> tuple[Any, Any]:
    """The model's `features` function and `head` module, with a clear error when missing."""
    if not (hasattr(model, "features") and hasattr(model, "head")):
        raise TypeError(
            f"{type(model).__name__} needs .features(x) and .head (a TransferModel such as "
            "tlc.models.DigitCNN)"
        )
    return model.features, model.head
