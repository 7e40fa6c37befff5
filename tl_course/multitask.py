"""Multi-task learning (notebook 05): shared trunk, named heads, loss weighting.

Hard parameter sharing: one trunk computes a feature vector, one small head per task
reads it. Training goes through `tlc.fit` with the step that `mtl_step` builds:

- ``weighting="equal"``: loss = sum_t w_t L_t with fixed weights (1 unless given);
- ``weighting="uncertainty"``: Kendall, Gal & Cipolla (2018), learnable log-variances
  s_t = log sigma_t^2 (parameters of the model), loss = sum_t exp(-s_t) L_t + s_t / 2:
  their classification form, 1/sigma^2 L + log sigma, so d loss / d s_t =
  1/2 - exp(-s_t) L_t. (LibMTL uses the regression form L_t / (2 exp(s_t)) + s_t / 2,
  which halves every task's weight: the two differ only by that factor on L_t);
- ``weighting="pcgrad"``: Yu et al. (2020), gradient surgery: each task's gradient on the
  shared parameters loses its component along any other task's gradient it conflicts
  with (negative inner product); heads keep their own gradients.

Batches are ``(images, {task: labels})``; a label of IGNORE (-100) means "no label".
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .device import to_device
from .models import count_parameters
from .train import StepContext, StepFn, evaluate

IGNORE = -100  # same value as multimnist.IGNORE and cross-entropy's ignore_index
WEIGHTINGS = ("equal", "uncertainty", "pcgrad")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TaskMismatchError(ValueError):
    """Task names of heads, losses, weights or batch labels do not line up."""


# --------------------------------------------------------------------------- models


def digit_trunk(width: int = 16, feature_dim: int | None = 128, grid: int = 3
                ) -> nn.Sequential:
    """A small CNN for 28x28 inputs ending in a `feature_dim` vector shared by all heads.

    Three conv stages (28 -> 14 -> 7), then average pooling to a grid x grid map rather
    than 1x1: MultiMNIST's two digits sit in different places, and the heads need to know
    which strokes are where to tell the left digit from the right one. A shared linear
    layer (feature_dim; None leaves it out) keeps the heads small, so sharing saves most
    of the parameters.
    """
    def stage(c_in: int, c_out: int, k: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out),
                nn.ReLU()]

    layers = [
        *stage(1, width, 5), nn.MaxPool2d(2),
        *stage(width, 2 * width, 3), nn.MaxPool2d(2),
        *stage(2 * width, 4 * width, 3), nn.AdaptiveAvgPool2d(grid), nn.Flatten(),
    ]
    if feature_dim is not None:
        layers += [nn.Linear(4 * width * grid * grid, feature_dim), nn.ReLU()]
    return nn.Sequential(*layers)


def trunk_dim(width: int = 16, feature_dim: int | None = 128, grid: int = 3) -> int:
    """Length of digit_trunk's feature vector."""
    return feature_dim if feature_dim is not None else 4 * width * grid * grid


class MultiTaskModel(nn.Module):
    """A shared `trunk` and one head per task (an nn.ModuleDict named by task).

    `forward` returns {task: logits}. With `uncertainty=True` the model also owns one
    learnable log-variance per task (`log_vars`), so any optimizer over
    `model.parameters()` trains them along with the weights.
    """

    def __init__(self, trunk: nn.Module, heads: Mapping[str, nn.Module],
                 uncertainty: bool = False):
        super().__init__()
        if not heads:
            raise ValueError("a multi-task model needs at least one head")
        bad = [t for t in heads if not isinstance(t, str) or not t.isidentifier()]
        if bad:
            raise ValueError(f"task names must be identifiers like 'left', got {bad}")
        self.trunk = trunk
        self.heads = nn.ModuleDict(OrderedDict(heads))
        self.log_vars: nn.ParameterDict | None = None
        if uncertainty:
            # s_t = log sigma_t^2 starts at 0: every task weighted 1 at first.
            self.log_vars = nn.ParameterDict({t: nn.Parameter(torch.zeros(())) for t in heads})

    @property
    def tasks(self) -> list[str]:
        return list(self.heads.keys())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.trunk(x)
        return {t: head(z) for t, head in self.heads.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trunk's trainable parameters: the ones every task pulls on."""
        return [p for p in self.trunk.parameters() if p.requires_grad]

    def task_weights(self) -> dict[str, float]:
        """Current uncertainty weights exp(-s_t) (empty without log-variances)."""
        if self.log_vars is None:
            return {}
        return {t: float(torch.exp(-s.detach())) for t, s in self.log_vars.items()}


def multitask_cnn(num_classes: Mapping[str, int], width: int = 16,
                  feature_dim: int | None = 128, grid: int = 3,
                  uncertainty: bool = False) -> MultiTaskModel:
    """A digit_trunk with one linear head per task ({task: number of classes})."""
    if not num_classes:
        raise ValueError("num_classes must name at least one task, e.g. {'left': 10}")
    dim = trunk_dim(width, feature_dim, grid)
    heads = {t: nn.Linear(dim, int(c)) for t, c in num_classes.items()}
    return MultiTaskModel(digit_trunk(width, feature_dim, grid), heads, uncertainty)


def single_task_models(num_classes: Mapping[str, int], **trunk: Any
                       ) -> dict[str, MultiTaskModel]:
    """One independent model per task (its own trunk and head): the no-sharing baseline."""
    return {t: multitask_cnn({t: c}, **trunk) for t, c in num_classes.items()}


def param_ratio(shared: nn.Module, singles: Iterable[nn.Module]) -> float:
    """Parameters of the shared model / the sum over the single-task models."""
    total = sum(count_parameters(m) for m in singles)
    if total == 0:
        raise ValueError("the single-task models have no parameters")
    return count_parameters(shared) / total


def mtl_optimizer(model: MultiTaskModel, lr: float = 1e-3, weight_decay: float = 0.0,
                  log_var_lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW over the model; log-variances in their own group, never weight-decayed.

    Decaying log-variances would pull every weight towards 1 for no reason; a larger
    learning rate for them (default 10 x lr) lets the weights settle within a short run.
    """
    log_vars = list(model.log_vars.parameters()) if model.log_vars is not None else []
    ids = {id(p) for p in log_vars}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups: list[dict[str, Any]] = [{"params": rest, "weight_decay": weight_decay}]
    if log_vars:
        groups.append({"params": log_vars, "weight_decay": 0.0,
                       "lr": 10 * lr if log_var_lr is None else log_var_lr})
    return torch.optim.AdamW(groups, lr=lr)


# --------------------------------------------------------------------------- losses, checks


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled examples (labels != IGNORE); 0 when there are none."""
    if not (labels != IGNORE).any():
        return logits.float().sum() * 0.0  # keeps the graph, adds nothing
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE)


def masked_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy over the labelled examples (0 when there are none)."""
    valid = labels != IGNORE
    if not valid.any():
        return torch.zeros((), device=logits.device)
    return (logits.argmax(dim=1)[valid] == labels[valid]).float().mean()


def check_tasks(model: MultiTaskModel, losses: Mapping[str, LossFn],
                weights: Mapping[str, float] | None = None,
                labels: Mapping[str, torch.Tensor] | None = None) -> None:
    """Raise TaskMismatchError unless heads, losses, weights and labels name the same tasks.

    Labels may carry extra tasks (a single-task model reads one label of a MultiMNIST
    batch); every head needs a loss and a label, and every loss or weight needs a head.
    """
    heads = set(model.tasks)
    if set(losses) != heads:
        no_loss, no_head = sorted(heads - set(losses)), sorted(set(losses) - heads)
        parts = ([f"head(s) with no loss: {no_loss}"] if no_loss else []) + (
            [f"loss(es) with no head: {no_head}"] if no_head else [])
        raise TaskMismatchError("; ".join(parts) + f" (heads: {sorted(heads)})")
    if weights is not None and set(weights) != heads:
        raise TaskMismatchError(f"weights name tasks {sorted(weights)} but the heads are "
                                f"{sorted(heads)}: give one weight per head")
    if labels is not None:
        if not isinstance(labels, Mapping):
            raise TaskMismatchError(
                "batches must be (images, {task: labels}), got labels of type "
                f"{type(labels).__name__}; use a MultiTaskDataset")
        missing = sorted(heads - set(labels))
        if missing:
            raise TaskMismatchError(f"the batch has no labels for head(s) {missing}; "
                                    f"it has labels for {sorted(labels)}")


def task_losses(model: MultiTaskModel, outputs: Mapping[str, torch.Tensor],
                labels: Mapping[str, torch.Tensor], losses: Mapping[str, LossFn]
                ) -> dict[str, torch.Tensor]:
    """{task: loss} for one batch."""
    return {t: losses[t](outputs[t], labels[t]) for t in model.tasks}


# --------------------------------------------------------------------------- PCGrad


def pcgrad_project(grads: Sequence[torch.Tensor], generator: torch.Generator | None = None
                   ) -> list[torch.Tensor]:
    """PCGrad's projection of flat per-task gradients (Yu et al., 2020, Algorithm 1).

    For each task i, in a random order over the other tasks j: when g_i' . g_j < 0, remove
    from g_i' (task i's gradient as projected so far) its component along g_j (the other
    task's original gradient): g_i' -= (g_i' . g_j) / |g_j|^2 g_j. With two tasks this
    leaves g_i' . g_j = 0 for a conflicting pair and changes nothing otherwise. There is
    no epsilon in the denominator: tiny gradients (norm 1e-7, late training without a loss
    scaler) are projected by the exact amount, and an exactly zero g_j is never divided
    by, since g_i' . g_j = 0 is no conflict. The results have the inputs' dtypes.
    """
    if len(grads) < 2:
        return [g.clone() for g in grads]
    originals = torch.stack([g.detach().float() for g in grads])
    projected = originals.clone()
    norms2 = (originals * originals).sum(dim=1)
    n = len(grads)
    for i in range(n):
        order = torch.randperm(n, generator=generator).tolist()
        for j in order:
            if j == i:
                continue
            dot = projected[i] @ originals[j]
            if dot < 0:
                projected[i] -= dot / norms2[j] * originals[j]
    return [projected[i].to(grads[i].dtype) for i in range(n)]


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params, strict=True)])


def _pcgrad_backward(model: MultiTaskModel, terms: Mapping[str, torch.Tensor],
                     ctx: StepContext, generator: torch.Generator) -> None:
    """Set .grad of every trainable parameter: PCGrad on the trunk, plain sums elsewhere."""
    shared = model.shared_parameters()
    shared_ids = {id(p) for p in shared}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in shared_ids]
    scaler = ctx.scaler if ctx.scaler is not None and ctx.scaler.is_enabled() else None
    flat_shared, other_sum = [], [None] * len(others)
    tasks = list(terms)
    for k, t in enumerate(tasks):
        term = scaler.scale(terms[t]) if scaler is not None else terms[t]
        # One backward per task: the trunk sees each task's gradient separately.
        grads = torch.autograd.grad(term, shared + others, retain_graph=k < len(tasks) - 1,
                                    allow_unused=True)
        flat_shared.append(_flat(grads[:len(shared)], shared))
        for i, g in enumerate(grads[len(shared):]):
            if g is not None:  # a head only receives its own task's gradient
                other_sum[i] = g if other_sum[i] is None else other_sum[i] + g
    combined = torch.stack(pcgrad_project(flat_shared, generator)).sum(dim=0)
    offset = 0
    for p in shared:
        p.grad = combined[offset:offset + p.numel()].view_as(p).to(p.dtype)
        offset += p.numel()
    for p, g in zip(others, other_sum, strict=True):
        p.grad = g
    ctx.grads_ready = True


# --------------------------------------------------------------------------- the step


def mtl_step(losses: Mapping[str, LossFn] | None = None, weighting: str = "equal",
             weights: Mapping[str, float] | None = None, seed: int = 0) -> StepFn:
    """A `fit` step for a MultiTaskModel on batches of (images, {task: labels}).

    - losses: {task: loss_fn(logits, labels)}; default masked cross-entropy for every head.
    - weighting: "equal", "uncertainty" (the model needs `uncertainty=True`; Kendall et
      al.'s classification form exp(-s_t) L_t + s_t / 2, not LibMTL's
      L_t / (2 exp(s_t)) + s_t / 2) or "pcgrad".
    - weights: fixed per-task weights for "equal" / "pcgrad" (default 1 each).
    - seed: the order in which PCGrad visits the other tasks (random, but repeatable).

    Returns loss (the weighted total), and per task `<task>_loss` and `<task>_acc` (plus
    `<task>_weight` with uncertainty weighting), so fit's history keeps
    `train_left_acc`, `val_left_acc`, ... for every task. With unlabelled (IGNORE)
    examples, a task's training metrics are averaged per batch; evaluate on fully
    labelled data for exact numbers.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of: {', '.join(WEIGHTINGS)}")
    if weighting == "uncertainty" and weights is not None:
        raise ValueError("uncertainty weighting learns its weights: do not pass `weights`")
    if weights is not None:
        neg = {t: w for t, w in weights.items() if not w >= 0}
        if neg:
            raise ValueError(f"task weights must be >= 0, got {neg}")
    generator = torch.Generator().manual_seed(seed)

    def step(model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Any]:
        if not isinstance(model, MultiTaskModel):
            raise TypeError(f"mtl_step needs a MultiTaskModel, got {type(model).__name__}")
        task_loss_fns = losses if losses is not None else {
            t: masked_cross_entropy for t in model.tasks}
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TaskMismatchError("batches must be (images, {task: labels}) pairs")
        check_tasks(model, task_loss_fns, weights, batch[1])
        if weighting == "uncertainty" and model.log_vars is None:
            raise ValueError("uncertainty weighting needs learnable log-variances: build the "
                             "model with uncertainty=True")
        x, labels = to_device(batch, ctx.device)
        outputs = model(x)
        per_task = task_losses(model, outputs, labels, task_loss_fns)
        out: dict[str, Any] = {}
        terms: dict[str, torch.Tensor] = {}
        for t, loss_t in per_task.items():
            if weighting == "uncertainty":
                s = model.log_vars[t]  # type: ignore[index]
                terms[t] = torch.exp(-s) * loss_t + 0.5 * s
                out[f"{t}_weight"] = torch.exp(-s.detach())
            else:
                terms[t] = (1.0 if weights is None else float(weights[t])) * loss_t
            out[f"{t}_loss"] = loss_t.detach()
            out[f"{t}_acc"] = masked_accuracy(outputs[t].detach(), labels[t])
        total = torch.stack(list(terms.values())).sum()
        if weighting == "pcgrad" and ctx.training and torch.is_grad_enabled():
            _pcgrad_backward(model, terms, ctx, generator)
        out["loss"] = total
        out["n"] = x.shape[0]
        return out

    return step


def task_accuracies(model: MultiTaskModel, loader: Iterable, device: torch.device
                    ) -> dict[str, float]:
    """{task: accuracy} of `model` on `loader` (batches of images and {task: labels})."""
    metrics = evaluate(model, loader, device, mtl_step())
    return {t: metrics[f"{t}_acc"] for t in model.tasks}
