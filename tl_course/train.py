"""One training loop for the whole course: fit, evaluate, predict, checkpoints.

`fit` is generic through its `step`: a function that takes the model, one batch
and a StepContext and returns a dict with a scalar "loss" tensor and any metrics
(plus "n", the batch size used to average them). Classification is the default
step; domain adaptation and multi-task learning plug in their own.

On CUDA the loop uses mixed precision (bf16, or fp16 with a GradScaler); on CPU
that machinery is switched off and costs nothing.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .device import autocast, make_grad_scaler, to_device
from .distributed import Dist


@dataclass
class StepContext:
    """What a step may need besides the batch: device, position in training, train or eval."""

    device: torch.device
    training: bool
    epoch: int = 0
    epochs: int = 1
    batch: int = 0
    batches: int = 1  # 0: the loader has no len(), so progress moves once per epoch
    # A step that sets parameter gradients itself (e.g. PCGrad) sets this to True so
    # that fit does not call backward on the returned loss. Such a step must compute its
    # gradients from `scaler.scale(loss)` so that fp16 gradient scaling stays consistent.
    grads_ready: bool = False
    scaler: torch.amp.GradScaler | None = None

    @property
    def progress(self) -> float:
        """Fraction of training done, 0 -> 1 (used by schedules such as DANN's lambda).

        Within an epoch it moves batch by batch when the loader's length is known; a
        loader without len() (batches = 0) moves it once per epoch, never past 1.
        """
        within = min(self.batch / self.batches, 1.0) if self.batches > 0 else 0.0
        return (self.epoch + within) / max(1, self.epochs)


StepFn = Callable[[nn.Module, Any, StepContext], dict[str, Any]]


def classification_step(model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Any]:
    """Cross-entropy on (images, labels); reports loss, accuracy and batch size."""
    x, y = to_device(batch, ctx.device)
    logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    acc = (logits.argmax(dim=1) == y).float().mean()
    return {"loss": loss, "acc": acc, "n": y.shape[0]}


@dataclass
class History:
    """Per-epoch metrics: `train_<name>` and `val_<name>` lists, plus seconds per epoch."""

    metrics: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int | None = None

    def add(self, name: str, value: float) -> None:
        self.metrics.setdefault(name, []).append(float(value))

    def __getitem__(self, name: str) -> list[float]:
        if name not in self.metrics:
            raise KeyError(f"no metric {name!r}; have: {', '.join(self.metrics)}")
        return self.metrics[name]

    def __contains__(self, name: str) -> bool:
        return name in self.metrics

    @property
    def epochs(self) -> int:
        return len(self.metrics.get("seconds", []))

    def extend(self, other: History) -> History:
        """Append another run's epochs (e.g. the unfrozen phase after the head phase)."""
        offset = self.epochs
        for name, values in other.metrics.items():
            self.metrics.setdefault(name, []).extend(values)
        if other.best_epoch is not None:
            self.best_epoch = offset + other.best_epoch
        return self

    def last(self, name: str) -> float:
        return self[name][-1]

    def summary(self) -> str:
        """One line: epochs, time and the final value of every metric."""
        shown = [f"{k}={v[-1]:.4f}" for k, v in self.metrics.items() if k != "seconds" and v]
        secs = sum(self.metrics.get("seconds", []))
        return f"{self.epochs} epochs in {secs:.1f}s | " + " ".join(shown)

    def __repr__(self) -> str:
        return f"History({self.summary()})"


def _sum_dtype(device: torch.device) -> torch.dtype:
    """Sums in double precision, as Python floats would be (MPS has no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


class _Averager:
    """Running means of step outputs, weighted by batch size, summed on the device.

    Nothing is read back to the host until `means()`: a `.item()` per step would make the
    CPU wait for the GPU at every step.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.count: int | torch.Tensor = 0

    def update(self, out: dict[str, Any]) -> None:
        n = out.get("n", 1)
        n = n.detach() if isinstance(n, torch.Tensor) else int(n)
        self.count = self.count + n
        for k, v in out.items():
            if k == "n":
                continue
            value = v.detach().to(_sum_dtype(v.device)) if isinstance(v, torch.Tensor) \
                else float(v)
            self.sums[k] = self.sums.get(k, 0.0) + value * n

    def empty(self) -> bool:
        return isinstance(self.count, int) and self.count == 0

    def means(self, dist: Dist | None = None) -> dict[str, float]:
        """The means, read back once (summed over every process first under torchrun)."""
        names = list(self.sums)
        tensors = [v for v in self.sums.values() if isinstance(v, torch.Tensor)]
        device = tensors[0].device if tensors else torch.device("cpu")
        if dist is not None and dist.active:
            device = dist.device
        dtype = _sum_dtype(device)
        totals = torch.stack([torch.as_tensor(v, dtype=dtype, device=device).reshape(())
                              for v in [*(self.sums[k] for k in names), self.count]])
        if dist is not None:
            dist.all_reduce_sum(totals)
        values = totals.tolist()  # the one host read
        count = max(1.0, values[-1])
        return {k: v / count for k, v in zip(names, values[:-1], strict=True)}


def _check_loss(out: dict[str, Any]) -> torch.Tensor:
    """The step's loss, checked for type and shape (no host read: see _NonFinite)."""
    loss = out.get("loss") if isinstance(out, dict) else None
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise TypeError(
            "a training step must return a dict with a scalar tensor under 'loss', "
            f"got {type(out).__name__} with keys {list(out) if isinstance(out, dict) else '-'}"
        )
    return loss


def _check_finite(avg: _Averager, epoch: int, first: int, last: int) -> None:
    """Raise if a loss since the epoch began was NaN or infinite (one host read).

    The running loss sum carries any NaN or infinity forward, so checking it every
    CHECK_EVERY steps finds a diverging run without a read per step.
    """
    total = avg.sums.get("loss")
    if isinstance(total, torch.Tensor) and not math.isfinite(float(total)):
        raise FloatingPointError(
            f"loss became {float(total)} (NaN or infinite) in epoch {epoch + 1}, at a step "
            f"between {first + 1} and {last + 1}: lower the learning rate or check the inputs"
        )


CHECK_EVERY = 50  # steps between reads of the non-finite-loss flag


def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    step: StepFn = classification_step,
    amp: bool = True,
    dist: Dist | None = None,
) -> dict[str, float]:
    """Average the step's metrics over `loader` with the model in eval mode, no gradients.

    Under torchrun (`dist`), each process evaluates its shard (make_loader(..., dist=d)
    without shuffling) and the sums and counts are added over processes, so every example
    counts exactly once.
    """
    model.eval()
    avg = _Averager()
    ctx = StepContext(device=device, training=False)
    with torch.no_grad(), autocast(device, enabled=amp):
        for batch in loader:
            avg.update(step(model, batch, ctx))
    if avg.empty() and (dist is None or not dist.active):
        raise ValueError("evaluate got an empty loader: check the dataset size and batch size")
    return avg.means(dist)


def predict(
    model: nn.Module, loader: Iterable, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (logits, labels) for every (image, label) batch of `loader`, on the CPU."""
    model.eval()
    outs, labels = [], []
    with torch.no_grad(), autocast(device):
        for x, y in loader:
            outs.append(model(to_device(x, device)).float().cpu())
            labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def accuracy(model: nn.Module, loader: Iterable, device: torch.device) -> float:
    """Top-1 accuracy of `model` on `loader`."""
    logits, labels = predict(model, loader, device)
    return (logits.argmax(dim=1) == labels).float().mean().item()


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save `obj` atomically: a temp file in the same folder, then rename.

    An interrupted write leaves neither a half-written file nor the temp file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the model's state_dict atomically (see save_atomic)."""
    return save_atomic(model.state_dict(), path)


def load_checkpoint(
    model: nn.Module, path: str | os.PathLike, device: torch.device | None = None
) -> nn.Module:
    """Load a state_dict saved by save_checkpoint into `model` (weights only, no pickled code)."""
    state = torch.load(Path(path), map_location=device or "cpu", weights_only=True)
    model.load_state_dict(state)
    return model


def fit(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    *,
    epochs: int,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    scheduler: Any = None,
    step: StepFn = classification_step,
    val_step: StepFn | None = None,
    monitor: str = "val_loss",
    patience: int | None = None,
    restore_best: bool = False,
    checkpoint: str | os.PathLike | None = None,
    amp: bool = True,
    progress: bool = True,
    desc: str = "fit",
    dist: Dist | None = None,
) -> History:
    """Train `model` for `epochs`, validating after each; return the History.

    - optimizer: defaults to AdamW(lr, weight_decay) over the trainable parameters.
    - scheduler: stepped once per epoch (after validation, with the monitored value
      for ReduceLROnPlateau).
    - monitor / patience: early stopping on a history key ("val_loss" is minimised,
      anything else maximised); restore_best puts back the best weights at the end.
    - checkpoint: path where the best weights are saved (atomically) as a state_dict.
    - progress: one tqdm bar over epochs; pass False in smoke / nbval runs.
    - dist: under torchrun (distributed.init_from_env), the model is wrapped in
      DistributedDataParallel for this call (so gradients are averaged over processes),
      metrics are summed over processes, and only rank 0 shows progress and saves. Give it
      loaders made with make_loader(..., dist=dist).

    Metrics stay on the device during an epoch and are read once at its end; a NaN or
    infinite loss is detected on the device and raised within CHECK_EVERY steps.
    """
    from tqdm.auto import tqdm

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    wants_monitor = patience is not None or restore_best or checkpoint is not None
    if wants_monitor and val_loader is None and monitor.startswith("val_"):
        raise ValueError(f"patience / restore_best / checkpoint watch {monitor!r}, which needs a "
                         "val_loader; pass one, or monitor='train_loss'")
    model.to(device)
    if optimizer is None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters: unfreeze something first")
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scaler = make_grad_scaler(device, enabled=amp)
    val_step = val_step or step
    history = History()
    minimise = monitor.endswith("loss")
    best = math.inf if minimise else -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    stale = 0
    try:
        batches = len(train_loader)  # type: ignore[arg-type]
    except TypeError:  # an iterable without len(): progress moves per epoch
        batches = 0

    main = dist is None or dist.is_main
    train_model = dist.wrap(model) if dist is not None else model
    bar = tqdm(range(epochs), desc=desc, disable=not (progress and main), leave=False)
    for epoch in bar:
        start = time.perf_counter()
        train_model.train()
        avg = _Averager()
        for i, batch in enumerate(train_loader):
            ctx = StepContext(device, True, epoch, epochs, i, batches, scaler=scaler)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, enabled=amp):
                out = step(train_model, batch, ctx)
            loss = _check_loss(out)
            if not ctx.grads_ready:
                scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            avg.update(out)
            if (i + 1) % CHECK_EVERY == 0:
                _check_finite(avg, epoch, i + 1 - CHECK_EVERY, i)
        if avg.empty():
            raise ValueError("fit got an empty train loader: check the dataset and batch size")
        _check_finite(avg, epoch, i - i % CHECK_EVERY, i)
        for k, v in avg.means(dist).items():
            history.add(f"train_{k}", v)
        if val_loader is not None:
            for k, v in evaluate(model, val_loader, device, val_step, amp, dist).items():
                history.add(f"val_{k}", v)
        history.add("lr", optimizer.param_groups[0]["lr"])
        history.add("seconds", time.perf_counter() - start)

        current = history[monitor][-1] if monitor in history else None
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(current if current is not None else history["train_loss"][-1])
            else:
                scheduler.step()
        if current is not None:
            improved = current < best if minimise else current > best
            if improved:
                best, stale, history.best_epoch = current, 0, epoch
                if restore_best:
                    best_state = copy.deepcopy(model.state_dict())
                if checkpoint is not None and main:
                    save_checkpoint(model, checkpoint)
            else:
                stale += 1
        bar.set_postfix({k: f"{v[-1]:.3f}" for k, v in history.metrics.items()
                         if k.endswith(("loss", "acc"))})
        if patience is not None and stale >= patience:
            break
    bar.close()
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    elif restore_best and main:  # e.g. a NaN validation loss: say so rather than stay silent
        warnings.warn(f"restore_best: {monitor} never improved (is it NaN?), so the weights "
                      "of the last epoch are kept", RuntimeWarning, stacklevel=2)
    return history
