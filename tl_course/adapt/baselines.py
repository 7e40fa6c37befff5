"""The two reference points of domain adaptation: source-only and train-on-target (oracle).

Both steps read the same (source_batch, target_batch) pairs as the adaptation methods,
so every method makes the same number of updates on the same batches.
- source-only: the lower bound, labelled source only; the target is ignored.
- oracle: trains on the *target's* labels, which domain adaptation assumes we do not
  have; an upper bound on what adaptation can reach.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from ..device import to_device
from ..train import StepContext
from ._batch import unpack


def _classify(model: nn.Module, x: Any, y: Any) -> dict[str, Any]:
    logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    return {"loss": loss, "acc": (logits.argmax(1) == y).float().mean(), "n": y.shape[0]}


def source_only_step(model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Any]:
    """Cross-entropy on the source half of a paired batch; the target half is unused."""
    x_s, y_s, _ = unpack(batch, ctx.device)
    return _classify(model, x_s, y_s)


def oracle_step(model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Any]:
    """Cross-entropy on the target half of a paired batch, with the target's own labels."""
    _, target = batch
    x_t, y_t = to_device(target, ctx.device)
    return _classify(model, x_t, y_t)
