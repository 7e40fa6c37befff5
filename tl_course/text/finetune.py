"""Fine-tuning the embedding table with a linear head, and what it does to the rows.

The model is the probe made trainable: an embedding table (one pretrained row per word of
the task), the probe's standardisation, and a linear head started from the probe's
weights (first the head, then unfreeze: 03's recipe). Training minimises the probe's own
objective (cross-entropy plus its L2 penalty on the head), now over the rows too, with the
course's `fit`.

A row receives a gradient only when its word is in a batch: with plain Adam the rows of
words never trained on (every test word) do not move at all, while the head learns a
boundary for rows that did. Weight decay (AdamW) shrinks every row, seen or not. L2-SP
(Li et al., 2018) adds alpha/2 ||E - E0||^2, pulling rows back to their pretrained values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..device import to_device
from ..train import History, StepContext, fit
from .probes import C_GRID, ProbeResult, balanced_accuracy, vector_probe


class WordClassifier(nn.Module):
    """Embedding table -> standardise -> linear score z; logits (0, z) for (negative, positive)."""

    def __init__(self, table: torch.Tensor | np.ndarray, mean: Any, scale: Any,
                 weight: Any, bias: float):
        super().__init__()
        table = torch.as_tensor(np.asarray(table), dtype=torch.float32)
        self.embedding = nn.Embedding.from_pretrained(table.clone(), freeze=False)
        self.register_buffer("pretrained", table.clone())
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale), dtype=torch.float32))
        self.head = nn.Linear(table.shape[1], 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(np.asarray(weight), dtype=torch.float32)
                                   .reshape(1, -1))
            self.head.bias.fill_(float(bias))

    @classmethod
    def from_probe(cls, table: Any, probe: Any) -> WordClassifier:
        """Start from a fitted StandardScaler + LogisticRegression pipeline (a probe's model)."""
        scaler, logreg = probe[0], probe[-1]
        return cls(table, scaler.mean_, scaler.scale_, logreg.coef_[0], logreg.intercept_[0])

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        z = self.head((self.embedding(idx) - self.mean) / self.scale)
        return torch.cat([torch.zeros_like(z), z], dim=1)

    def row_shift(self) -> torch.Tensor:
        """How far each row has moved from its pretrained value (L2), on the CPU."""
        return (self.embedding.weight.detach() - self.pretrained).norm(dim=1).cpu()

    def row_norm_ratio(self) -> torch.Tensor:
        """Each row's length now over its pretrained length (< 1: the row shrank), on the CPU."""
        return (self.embedding.weight.detach().norm(dim=1)
                / self.pretrained.norm(dim=1).clamp_min(1e-12)).cpu()


def penalised_step(head_l2: float, l2sp: float):
    """A `fit` step: cross-entropy + head_l2 ||w||^2 + l2sp / 2 ||E - E0||^2."""

    def step(model: WordClassifier, batch: Any, ctx: StepContext) -> dict[str, Any]:
        idx, y = to_device(batch, ctx.device)
        logits = model(idx)
        loss = F.cross_entropy(logits.float(), y)
        if ctx.training:
            loss = loss + head_l2 * model.head.weight.pow(2).sum()
            if l2sp:
                diff = model.embedding.weight - model.pretrained
                loss = loss + 0.5 * l2sp * diff.pow(2).sum()
        return {"loss": loss, "acc": (logits.argmax(1) == y).float().mean(), "n": y.shape[0]}

    return step


def probe_penalty(c: float, n: int) -> float:
    """The head's L2 weight per word that reproduces LogisticRegression(C=c) on n words:
    it minimises ||w||^2 / 2 + c * sum of log-losses, i.e. mean log-loss + ||w||^2 / (2 c n)."""
    return 1.0 / (2 * c * n)


def finetune(model: WordClassifier, train_idx: np.ndarray, labels: np.ndarray, *, lr: float,
             steps: int, device: torch.device, head_l2: float = 0.0, l2sp: float = 0.0,
             weight_decay: float = 0.0) -> History:
    """Full-batch training of rows and head for `steps` Adam steps (AdamW when
    `weight_decay` > 0), through the course's `fit` (one batch per epoch)."""
    batch = (torch.as_tensor(np.asarray(train_idx), dtype=torch.long),
             torch.as_tensor(np.asarray(labels)[train_idx], dtype=torch.long))
    params = list(model.parameters())
    optimizer = (torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay) if weight_decay
                 else torch.optim.Adam(params, lr=lr))
    return fit(model, [batch], epochs=steps, device=device, optimizer=optimizer,
               step=penalised_step(head_l2, l2sp), amp=False, progress=False, desc="fine-tune")


def predict_all(model: WordClassifier, device: torch.device) -> np.ndarray:
    """The predicted class of every row of the table."""
    model.eval()
    with torch.no_grad():
        idx = torch.arange(model.embedding.num_embeddings, device=device)
        return model(idx).argmax(1).cpu().numpy()


@dataclass
class Run:
    """One fine-tuning run: test / validation balanced accuracy and how far rows moved."""

    test: float
    val: float
    seen_shift: float  # mean over the k training words' rows
    unseen_shift: float  # largest over every other row
    unseen_shift_min: float = 0.0  # smallest over every other row
    unseen_norm_ratio_max: float = 1.0  # largest length after / length before, other rows


@dataclass
class Episode:
    """The probe and each fine-tuning of one episode, and the choice made on validation."""

    probe: ProbeResult
    runs: dict[str, Run] = field(default_factory=dict)
    chosen: str = "probe"

    @property
    def chosen_test(self) -> float:
        return self.probe.test if self.chosen == "probe" else self.runs[self.chosen].test


def lr_name(lr: float) -> str:
    return f"lr {lr:g}"


def finetune_episode(table: np.ndarray, labels: np.ndarray, train: np.ndarray,
                     val: np.ndarray, test: np.ndarray, device: torch.device, *,
                     lrs: Sequence[float] = (1e-3, 1e-2), steps: int = 200,
                     l2sp: float | None = None, l2sp_lr: float = 1e-2,
                     weight_decay_lr: float | None = None, cs: Sequence[float] = C_GRID,
                     seed: int = 0) -> Episode:
    """The probe (C chosen on `val`), then fine-tuning from it at each learning rate; the
    learning rate (0 = keep the probe) is chosen on `val`, ties going to the smaller.
    Optionally also an L2-SP run and an AdamW run (weight decay 1e-2), both at `l2sp_lr`."""
    probe = vector_probe(table, labels, train, val, test, cs)
    episode = Episode(probe)
    head_l2 = probe_penalty(probe.c, len(train))
    seen = np.zeros(len(table), dtype=bool)
    seen[train] = True
    configs = {lr_name(lr): dict(lr=lr) for lr in lrs}
    if l2sp is not None:
        configs["L2-SP"] = dict(lr=l2sp_lr, l2sp=l2sp)
    if weight_decay_lr is not None:
        configs["AdamW"] = dict(lr=weight_decay_lr, weight_decay=1e-2)
    best = probe.val
    for name, kwargs in configs.items():
        torch.manual_seed(seed)
        model = WordClassifier.from_probe(table, probe.model).to(device)
        finetune(model, train, labels, steps=steps, device=device, head_l2=head_l2, **kwargs)
        pred = predict_all(model, device)
        shift = model.row_shift().numpy()
        ratio = model.row_norm_ratio().numpy()
        rest_shift, rest_ratio = shift[~seen], ratio[~seen]  # every row not trained on
        run = Run(balanced_accuracy(labels[test], pred[test]),
                  balanced_accuracy(labels[val], pred[val]),
                  float(shift[seen].mean()), float(rest_shift.max(initial=0.0)),
                  float(rest_shift.min()) if len(rest_shift) else 0.0,
                  float(rest_ratio.max()) if len(rest_ratio) else 1.0)
        episode.runs[name] = run
        if name.startswith("lr ") and run.val > best:
            best, episode.chosen = run.val, name
    return episode
