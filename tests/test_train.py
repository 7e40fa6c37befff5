import contextlib
import copy
import math
import os
import pickle
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tl_course.train
from tl_course.device import seed_everything
from tl_course.distributed import Dist
from tl_course.models import MLP, DigitCNN
from tl_course.train import (
    CHECK_EVERY,
    History,
    StepContext,
    accuracy,
    classification_step,
    evaluate,
    fit,
    load_checkpoint,
    predict,
    save_atomic,
    save_checkpoint,
)


def _loader(ds, bs=16, shuffle=False, seed=0):
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=bs, shuffle=shuffle, generator=gen)


def _small_mlp():
    return MLP(hidden=(32,))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _zero_lr_adamw(model):
    return torch.optim.AdamW(model.parameters(), lr=0.0)


# ----------------------------------------------------------------- learning


def test_fit_overfits_a_tiny_batch(cpu):
    seed_everything(0)
    x = torch.rand(32, 1, 28, 28)
    y = torch.arange(32) % 10
    loader = _loader(TensorDataset(x, y), bs=32)
    model = _small_mlp()
    before = evaluate(model, loader, cpu)["loss"]
    hist = fit(model, loader, epochs=100, device=cpu, lr=3e-3, progress=False)
    assert hist["train_loss"][-1] < 0.05 < before
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    assert accuracy(model, loader, cpu) == 1.0


def test_fit_overfits_with_the_cnn(cpu):
    seed_everything(0)
    x = torch.rand(16, 1, 28, 28)
    y = torch.arange(16) % 10
    loader = _loader(TensorDataset(x, y), bs=16)
    model = DigitCNN(width=8)
    fit(model, loader, epochs=40, device=cpu, lr=1e-2, progress=False)
    assert accuracy(model, loader, cpu) == 1.0


def test_frozen_parameters_do_not_change(cpu, tiny_digits):
    seed_everything(0)
    model = DigitCNN(width=4)
    frozen = {n: p for n, p in model.named_parameters() if not n.startswith("head.")}
    assert frozen
    for p in frozen.values():
        p.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, _loader(tiny_digits), epochs=2, device=cpu, lr=1e-2, weight_decay=0.1,
        progress=False)
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, before[name]), name
            assert p.grad is None, name
    assert any(not torch.equal(p, before[n]) for n, p in model.head.named_parameters(prefix="head"))


def test_fit_without_trainable_parameters_raises(cpu, tiny_digits):
    model = _small_mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="trainable"):
        fit(model, _loader(tiny_digits), epochs=1, device=cpu, progress=False)


def test_seeded_runs_repeat_exactly(cpu, tiny_digits):
    def run():
        seed_everything(42)
        model = _small_mlp()
        hist = fit(model, _loader(tiny_digits, shuffle=True, seed=1), _loader(tiny_digits),
                   epochs=3, device=cpu, lr=1e-2, progress=False)
        return hist, _state(model)

    (h1, w1), (h2, w2) = run(), run()
    for key in h1.metrics:
        if key != "seconds":
            assert h1[key] == h2[key], key
    assert _same(w1, w2)


def test_history_keys(cpu, tiny_digits):
    hist = fit(_small_mlp(), _loader(tiny_digits), _loader(tiny_digits), epochs=2, device=cpu,
               progress=False)
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"):
        assert key in hist and len(hist[key]) == 2, key
    assert "train_n" not in hist  # the batch size is a weight, not a metric
    assert hist.epochs == 2
    assert all(s > 0 for s in hist["seconds"])
    assert all(0.0 <= a <= 1.0 for a in hist["train_acc"] + hist["val_acc"])
    assert hist.last("val_loss") == hist["val_loss"][-1]
    assert hist.best_epoch in (0, 1)


def test_no_validation_gives_train_keys_only(cpu, tiny_digits):
    hist = fit(_small_mlp(), _loader(tiny_digits), epochs=1, device=cpu, progress=False)
    assert "train_loss" in hist and "val_loss" not in hist
    assert hist.best_epoch is None


def test_train_metrics_are_weighted_by_batch_size(cpu):
    # 3 examples in batches of 2 and 1: the epoch mean must weight by examples.
    ds = TensorDataset(torch.zeros(3, 1, 28, 28), torch.zeros(3, dtype=torch.long))
    values = iter([1.0, 4.0])

    def step(model, batch, ctx):
        x, _ = batch
        out = model(x).sum() * 0.0 + next(values)
        return {"loss": out, "n": x.shape[0]}

    hist = fit(_small_mlp(), _loader(ds, bs=2), epochs=1, device=cpu, step=step, progress=False)
    assert hist["train_loss"] == [pytest.approx((2 * 1.0 + 1 * 4.0) / 3)]


def test_history_helpers():
    h = History()
    h.add("train_loss", 1.5)
    h.add("seconds", 2.0)
    assert h["train_loss"] == [1.5] and h.epochs == 1
    with pytest.raises(KeyError, match="train_loss"):
        h["val_acc"]
    assert "train_loss=1.5000" in h.summary() and "1 epochs" in h.summary()
    assert "train_loss" in repr(h)


# ----------------------------------------------------------------- early stopping, checkpoints


def test_early_stopping_when_nothing_improves(cpu, tiny_digits):
    model = _small_mlp()  # no BatchNorm or dropout: with lr=0 the val loss is constant
    hist = fit(model, _loader(tiny_digits), _loader(tiny_digits), epochs=10, device=cpu,
               optimizer=_zero_lr_adamw(model), patience=2, progress=False)
    assert hist.epochs == 3  # the first epoch sets the best, then 2 without improvement
    assert hist.best_epoch == 0
    assert len(set(hist["val_loss"])) == 1


def test_no_early_stopping_without_patience(cpu, tiny_digits):
    model = _small_mlp()
    hist = fit(model, _loader(tiny_digits), _loader(tiny_digits), epochs=4, device=cpu,
               optimizer=_zero_lr_adamw(model), progress=False)
    assert hist.epochs == 4


def _scripted_val_step(values, snapshots):
    """A val step whose loss follows `values` per epoch; it snapshots the weights it sees."""
    it = iter(values)

    def step(model, batch, ctx):
        assert not ctx.training and not torch.is_grad_enabled()
        snapshots.append(_state(model))
        return {"loss": torch.tensor(next(it))}

    return step


def test_restore_best_and_checkpoint_hold_the_best_weights(cpu, tiny_digits, tmp_path):
    seed_everything(0)
    snapshots = []
    val_losses = [3.0, 1.0, 2.0, 4.0]  # best after the second epoch
    ds = TensorDataset(*(t[:16] for t in tiny_digits.tensors))
    ckpt = tmp_path / "ckpt" / "best.pt"
    model = _small_mlp()
    hist = fit(model, _loader(ds), _loader(ds, bs=16), epochs=4, device=cpu, lr=1e-2,
               val_step=_scripted_val_step(val_losses, snapshots), restore_best=True,
               checkpoint=ckpt, progress=False)
    assert hist.best_epoch == 1
    assert hist["val_loss"] == val_losses
    assert len(snapshots) == 4 and not _same(snapshots[1], snapshots[3])
    assert _same(_state(model), snapshots[1])  # restored
    fresh = load_checkpoint(_small_mlp(), ckpt)
    assert _same(_state(fresh), snapshots[1])  # the checkpoint holds the best epoch


def test_monitor_other_than_loss_is_maximised(cpu, tiny_digits):
    accs = iter([0.2, 0.5, 0.4, 0.3, 0.9, 0.9])

    def val_step(model, batch, ctx):
        return {"loss": torch.tensor(1.0), "acc": torch.tensor(next(accs))}

    hist = fit(_small_mlp(), _loader(tiny_digits), _loader(tiny_digits, bs=64), epochs=6,
               device=cpu, val_step=val_step, monitor="val_acc", patience=2, progress=False)
    # Maximised: best at epoch 1, then two epochs without improvement -> stop after epoch 3.
    assert hist.best_epoch == 1
    assert hist.epochs == 4
    assert hist["val_acc"] == pytest.approx([0.2, 0.5, 0.4, 0.3])


def test_save_and_load_checkpoint(tmp_path):
    seed_everything(1)
    a, b = _small_mlp(), _small_mlp()
    assert not _same(_state(a), _state(b))
    path = save_checkpoint(a, tmp_path / "sub" / "m.pt")
    assert path == tmp_path / "sub" / "m.pt" and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.pt"]  # no temp files left
    load_checkpoint(b, path)
    assert _same(_state(a), _state(b))
    # Saved as a plain state_dict: loadable with weights_only=True.
    state = torch.load(path, weights_only=True)
    assert set(state) == set(a.state_dict())


def test_save_checkpoint_overwrites_atomically(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(_small_mlp(), path)
    model = _small_mlp()
    save_checkpoint(model, path)
    assert _same(torch.load(path, weights_only=True), _state(model))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_failed_save_leaves_no_temp_file(tmp_path, monkeypatch):
    def broken_save(obj, f, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_small_mlp(), tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- custom steps


def test_custom_step_gets_context_with_progress(cpu, tiny_digits):
    seen = []

    def step(model, batch, ctx):
        assert isinstance(ctx, StepContext) and ctx.training and ctx.device == cpu
        seen.append((ctx.epoch, ctx.batch, ctx.progress))
        return classification_step(model, batch, ctx)

    epochs, loader = 3, _loader(tiny_digits, bs=16)  # 4 batches
    hist = fit(_small_mlp(), loader, epochs=epochs, device=cpu, step=step, progress=False)
    total = epochs * len(loader)
    assert len(seen) == total
    assert [s[2] for s in seen] == pytest.approx([i / total for i in range(total)])
    assert seen[0][2] == 0.0 and seen[-1][2] < 1.0
    assert [s[:2] for s in seen[:5]] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    assert "train_acc" in hist


def test_step_context_progress_bounds():
    cpu = torch.device("cpu")
    assert StepContext(cpu, True, epoch=0, epochs=2, batch=0, batches=5).progress == 0
    last = StepContext(cpu, True, epoch=1, epochs=2, batch=4, batches=5)
    assert last.progress == pytest.approx(0.9)
    assert StepContext(cpu, True, epoch=2, epochs=2).progress == 1.0


def test_step_without_loss_raises_type_error(cpu, tiny_digits):
    def step(model, batch, ctx):
        return {"acc": torch.tensor(1.0)}

    with pytest.raises(TypeError, match="loss"):
        fit(_small_mlp(), _loader(tiny_digits), epochs=1, device=cpu, step=step, progress=False)


def test_step_returning_non_scalar_loss_raises(cpu, tiny_digits):
    def step(model, batch, ctx):
        x, y = batch
        return {"loss": F.cross_entropy(model(x), y, reduction="none")}

    with pytest.raises(TypeError):
        fit(_small_mlp(), _loader(tiny_digits), epochs=1, device=cpu, step=step, progress=False)


def test_nan_loss_raises(cpu, tiny_digits):
    def step(model, batch, ctx):
        out = classification_step(model, batch, ctx)
        out["loss"] = out["loss"] * float("nan")
        return out

    with pytest.raises(FloatingPointError, match="learning rate"):
        fit(_small_mlp(), _loader(tiny_digits), epochs=1, device=cpu, step=step, progress=False)


def test_step_that_sets_grads_itself(cpu, tiny_digits):
    """grads_ready: fit must not call backward again (that would fail on a freed graph)."""
    grads = []

    def step(model, batch, ctx):
        out = classification_step(model, batch, ctx)
        out["loss"].backward()
        grads.append(model.net[-1].weight.grad.clone())
        ctx.grads_ready = True
        return out

    seed_everything(0)
    model = _small_mlp()
    before = _state(model)
    fit(model, _loader(tiny_digits, bs=64), epochs=1, device=cpu, step=step, lr=1e-2,
        progress=False)
    assert len(grads) == 1
    assert not _same(before, _state(model))  # the optimizer stepped with those grads


def test_epochs_must_be_positive(cpu, tiny_digits):
    with pytest.raises(ValueError, match="epochs"):
        fit(_small_mlp(), _loader(tiny_digits), epochs=0, device=cpu, progress=False)


def test_empty_loader_raises(cpu):
    empty = _loader(TensorDataset(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="empty"):
        fit(_small_mlp(), empty, epochs=1, device=cpu, progress=False)
    with pytest.raises(ValueError, match="empty"):
        evaluate(_small_mlp(), empty, cpu)


def test_scheduler_is_stepped_per_epoch(cpu, tiny_digits):
    model = _small_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    hist = fit(model, _loader(tiny_digits), epochs=3, device=cpu, optimizer=opt,
               scheduler=sched, progress=False)
    assert hist["lr"] == pytest.approx([0.1, 0.05, 0.025])


def _constant_train_step(model, batch, ctx):
    x, _ = batch
    return {"loss": model(x).sum() * 0.0 + 1.0}  # train loss never improves


@pytest.mark.parametrize(
    ("val_losses", "expected_lrs"),
    [([3.0, 2.0, 1.0, 0.5], [0.1, 0.1, 0.1, 0.1]),  # monitored value improves: no cut
     ([1.0, 1.0, 1.0, 1.0], [0.1, 0.1, 0.05, 0.025])],  # plateau: halve each epoch
)
def test_plateau_scheduler_gets_the_monitored_value(cpu, tiny_digits, val_losses, expected_lrs):
    model = _small_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    hist = fit(model, _loader(tiny_digits), _loader(tiny_digits, bs=64), epochs=4, device=cpu,
               optimizer=opt, scheduler=sched, step=_constant_train_step,
               val_step=_scripted_val_step(val_losses, []), progress=False)
    assert hist["lr"] == pytest.approx(expected_lrs)


# ----------------------------------------------------------------- evaluate / predict / accuracy


def test_evaluate_predict_accuracy_agree(cpu, tiny_digits):
    seed_everything(3)
    model = _small_mlp()
    loader = _loader(tiny_digits, bs=10)  # uneven last batch (64 = 6 * 10 + 4)
    logits, labels = predict(model, loader, cpu)
    assert logits.shape == (64, 10) and torch.equal(labels, tiny_digits.tensors[1])
    expected_acc = (logits.argmax(1) == labels).float().mean().item()
    expected_loss = F.cross_entropy(logits, labels).item()
    metrics = evaluate(model, loader, cpu)
    assert metrics["acc"] == pytest.approx(expected_acc)
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert accuracy(model, loader, cpu) == pytest.approx(expected_acc)
    assert not model.training  # evaluation switches to eval mode


def test_predict_matches_model_in_eval_mode(cpu, tiny_digits):
    seed_everything(0)
    model = MLP(hidden=(16,), dropout=0.5)
    logits, _ = predict(model, _loader(tiny_digits), cpu)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(logits, model(tiny_digits.tensors[0]))


def test_accuracy_of_a_perfect_model(cpu):
    class Oracle(nn.Module):
        def forward(self, x):
            return F.one_hot(x[:, 0, 0, 0].long(), 10).float()

    y = torch.arange(20) % 10
    x = y.float().view(-1, 1, 1, 1).expand(-1, 1, 28, 28).clone()
    assert accuracy(Oracle(), _loader(TensorDataset(x, y)), cpu) == 1.0
    wrong = TensorDataset(x, (y + 1) % 10)
    assert accuracy(Oracle(), _loader(wrong), cpu) == 0.0
    assert math.isclose(evaluate(Oracle(), _loader(wrong), cpu)["acc"], 0.0)


def test_fit_changes_the_weights(cpu, tiny_digits):
    model = _small_mlp()
    twin = copy.deepcopy(model)
    fit(model, _loader(tiny_digits), epochs=1, device=cpu, progress=False)
    assert not _same(_state(model), _state(twin))


# ----------------------------------------------------------------- more of fit's contract


def _linear_batches(n, size=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 2, generator=gen), torch.randint(0, 2, (size,), generator=gen))
            for _ in range(n)]


def _linear(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(2, 2)


def _scripted_train_step(values_by_epoch, n=1):
    """A train step whose loss is values_by_epoch[epoch][batch] (no gradient to speak of)."""

    def step(model, batch, ctx):
        x, _ = batch
        v = values_by_epoch[ctx.epoch][ctx.batch]
        return {"loss": model(x).sum() * 0.0 + v, "n": n}

    return step


@pytest.mark.parametrize("watcher", ["patience", "restore_best", "checkpoint"])
def test_watching_the_validation_loss_without_a_val_loader_is_refused(cpu, watcher, tmp_path):
    """Each of patience / restore_best / checkpoint alone needs the monitored val metric."""
    kwargs = {"patience": {"patience": 1}, "restore_best": {"restore_best": True},
              "checkpoint": {"checkpoint": tmp_path / "best.pt"}}[watcher]
    with pytest.raises(ValueError, match="val_loader"):
        fit(_linear(), _linear_batches(2), epochs=1, device=cpu, progress=False, **kwargs)
    assert not (tmp_path / "best.pt").exists()


@pytest.mark.parametrize("train_losses", [[1.0, 1.0, 1.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
def test_without_validation_a_plateau_scheduler_follows_the_train_loss(cpu, train_losses):
    model = _linear()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    hist = fit(model, _linear_batches(2), epochs=4, device=cpu, optimizer=opt, scheduler=sched,
               step=_scripted_train_step([[v, v] for v in train_losses]), progress=False)
    ref_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, patience=0, factor=0.5)
    expected = []
    for v in train_losses:
        expected.append(ref_opt.param_groups[0]["lr"])
        ref.step(v)
    assert hist["train_loss"] == pytest.approx(train_losses)
    assert hist["lr"] == pytest.approx(expected)


def test_a_validation_loss_that_never_improves_stops_the_run_and_restores_nothing(
        cpu, tiny_digits, tmp_path):
    """NaN is no improvement, from the first epoch on: `patience` NaN epochs end the run, no
    checkpoint is written and restore_best keeps the last weights (there is no best)."""
    snapshots = []
    ds = TensorDataset(*(t[:16] for t in tiny_digits.tensors))
    model = _small_mlp()
    with pytest.warns(RuntimeWarning, match="val_loss never improved"):
        hist = fit(model, _loader(ds), _loader(ds), epochs=5, device=cpu, lr=1e-2,
                   val_step=_scripted_val_step([math.nan] * 5, snapshots), patience=2,
                   restore_best=True, checkpoint=tmp_path / "best.pt", progress=False)
    assert hist.epochs == 2 and hist.best_epoch is None
    assert _same(_state(model), snapshots[-1])
    assert not (tmp_path / "best.pt").exists()


def test_an_equal_value_of_a_maximised_metric_is_no_improvement(cpu, tiny_digits):
    def val_step(model, batch, ctx):
        return {"loss": torch.tensor(1.0), "acc": torch.tensor(0.5)}

    hist = fit(_small_mlp(), _loader(tiny_digits), _loader(tiny_digits, bs=64), epochs=4,
               device=cpu, val_step=val_step, monitor="val_acc", patience=2, progress=False)
    assert hist.best_epoch == 0 and hist.epochs == 3


def test_fit_moves_the_model_to_the_device():
    """The meta device stands in for a GPU: the step sees the model's parameters there."""
    meta, seen = torch.device("meta"), []

    class Stop(Exception):
        pass

    def step(model, batch, ctx):
        seen.append((ctx.device, {p.device for p in model.parameters()}))
        raise Stop

    with pytest.raises(Stop):
        fit(_linear(), _linear_batches(1), epochs=1, device=meta, progress=False, step=step)
    assert seen == [(meta, {meta})]


def test_an_unsized_loader_moves_progress_once_per_epoch(cpu):
    """A loader without len() and several batches per epoch: progress is epoch / epochs at
    every batch of the epoch, so it stays in [0, 1) (DANN's schedule reads it)."""
    batches = _linear_batches(3)
    seen = []

    class Unsized:
        def __iter__(self):
            yield from batches

    def step(model, b, ctx):
        seen.append((ctx.batches, ctx.progress))
        return classification_step(model, b, ctx)

    fit(_linear(), Unsized(), epochs=2, device=cpu, step=step, progress=False)
    assert seen == [(0, pytest.approx(e / 2)) for e in range(2) for _ in range(3)]


def test_progress_moves_batch_by_batch_with_a_sized_loader(cpu):
    """(epoch + batch / batches) / epochs, the formula DANN's schedule is written for."""
    seen = []

    def step(model, b, ctx):
        seen.append(ctx.progress)
        return classification_step(model, b, ctx)

    fit(_linear(), _linear_batches(4), epochs=2, device=cpu, step=step, progress=False)
    assert seen == [pytest.approx((e + b / 4) / 2) for e in range(2) for b in range(4)]


def test_seconds_are_the_wall_time_of_each_epoch(cpu):
    start = time.perf_counter()
    hist = fit(_linear(), _linear_batches(3), epochs=2, device=cpu, progress=False)
    wall = time.perf_counter() - start
    assert all(0 < s for s in hist["seconds"]) and sum(hist["seconds"]) <= wall


def test_a_step_that_returns_a_bare_tensor_raises_type_error(cpu):
    def step(model, batch, ctx):
        x, y = batch
        return F.cross_entropy(model(x), y)

    with pytest.raises(TypeError, match="dict"):
        fit(_linear(), _linear_batches(2), epochs=1, device=cpu, step=step, progress=False)


@pytest.mark.parametrize(("nan_epoch", "nan_step"), [(0, 0), (1, 60), (1, CHECK_EVERY - 1),
                                                     (1, 2 * CHECK_EVERY + 10)])
def test_a_nan_loss_is_raised_within_check_every_steps_naming_its_window(
        cpu, nan_epoch, nan_step):
    """The check runs after every CHECK_EVERY-th step and at the end of the epoch: the
    error names the epoch and the window of steps (1-based) the NaN came from."""
    n = 2 * CHECK_EVERY + 30
    ran = []

    def step(model, batch, ctx):
        ran.append((ctx.epoch, ctx.batch))
        out = classification_step(model, batch, ctx)
        if (ctx.epoch, ctx.batch) == (nan_epoch, nan_step):
            out["loss"] = out["loss"] * math.nan
        return out

    last = min(n, -(-(nan_step + 1) // CHECK_EVERY) * CHECK_EVERY)  # the check after the NaN
    first = (last - 1) // CHECK_EVERY * CHECK_EVERY + 1
    with pytest.raises(FloatingPointError,
                       match=f"in epoch {nan_epoch + 1}, at a step between {first} and {last}:"):
        fit(_linear(), _linear_batches(n), epochs=2, device=cpu, step=step,
            optimizer=torch.optim.SGD(_linear().parameters(), lr=0.0), progress=False)
    assert ran[-1] == (nan_epoch, last - 1)


# ----------------------------------------------------------------- mixed precision, stood in


@pytest.fixture
def cpu_amp(monkeypatch):
    """Mixed precision stood in on the CPU where fit and evaluate look it up: autocast to
    bfloat16 and an active GradScaler, as on a CUDA device with fp16 (the real helpers
    switch both off on the CPU). Both stay off when `enabled` is false, as the real ones."""

    def autocast(device, enabled=True):
        if not enabled:
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=torch.bfloat16)

    def make_grad_scaler(device, enabled=True):
        return torch.amp.GradScaler("cpu", enabled=enabled)

    monkeypatch.setattr(tl_course.train, "autocast", autocast)
    monkeypatch.setattr(tl_course.train, "make_grad_scaler", make_grad_scaler)


def test_amp_is_on_by_default_in_training_and_validation_and_amp_false_switches_it_off(
        cpu, cpu_amp):
    """The step runs under autocast with the run's GradScaler in its context (a step that
    sets gradients itself needs it); amp=False gives full precision and no scaling."""
    seen = []

    def step(model, batch, ctx):
        x, y = batch
        logits = model(x)
        scaling = ctx.scaler.is_enabled() if ctx.training else None
        seen.append((ctx.training, logits.dtype, scaling))
        return {"loss": F.cross_entropy(logits.float(), y), "n": len(y)}

    batches = _linear_batches(2, size=4)
    fit(_linear(), batches, batches[:1], epochs=1, device=cpu, step=step, progress=False)
    assert seen == [(True, torch.bfloat16, True)] * 2 + [(False, torch.bfloat16, None)]
    seen.clear()
    fit(_linear(), batches, batches[:1], epochs=1, device=cpu, step=step, amp=False,
        progress=False)
    assert seen == [(True, torch.float32, False)] * 2 + [(False, torch.float32, None)]
    seen.clear()
    evaluate(_linear(), batches[:1], cpu, step)
    evaluate(_linear(), batches[:1], cpu, step, amp=False)
    assert seen == [(False, torch.bfloat16, None), (False, torch.float32, None)]


# ----------------------------------------------------------------- progress bar


def test_the_progress_bar_is_on_by_default_named_fit_with_losses_and_accuracies(
        cpu, capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # tqdm reads TQDM_* overrides
    batches = _linear_batches(2, size=4)
    hist = fit(_linear(), batches, batches, epochs=2, device=cpu)
    err = capsys.readouterr().err
    assert "\rfit: " in err
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert f"{key}={hist[key][-1]:.3f}" in err, key
    assert "lr=" not in err and "seconds=" not in err
    assert "\n" not in err  # leave=False: the bar leaves no line behind
    fit(_linear(), batches, epochs=1, device=cpu, desc="head phase")
    assert "\rhead phase: " in capsys.readouterr().err
    fit(_linear(), batches, epochs=1, device=cpu, progress=False)
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------- distributed, stood in


class _Wrapped(nn.Module):
    """What DistributedDataParallel would be: the same module behind a wrapper."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


class _PeerDist:
    """A Dist for one process of two: the peer saw `peer` examples whose every metric was 1,
    so all_reduce_sum adds `peer` to every sum and to the count (what gloo would do)."""

    world_size = 2
    active = True

    def __init__(self, rank=0, peer=2.0, device=None):
        self.rank, self.peer, self.device = rank, peer, device or torch.device("cpu")
        self.reduced = []

    @property
    def is_main(self):
        return self.rank == 0

    def wrap(self, model):
        return _Wrapped(model)

    def all_reduce_sum(self, t):
        self.reduced.append((t.device, t.dtype, tuple(t.shape)))
        return t.add_(self.peer)


def test_under_torchrun_fit_trains_the_wrapped_model_and_sums_metrics_over_processes(
        cpu, tmp_path, capsys):
    """Rank 1 of 2: the step gets the wrapped model, the train and val means include the
    peer's examples, and rank 1 neither shows progress nor saves a checkpoint."""
    dist = _PeerDist(rank=1, peer=2.0)
    wrapped = []

    def train_step(model, batch, ctx):
        wrapped.append(isinstance(model, _Wrapped))
        return _scripted_train_step([[1.0, 4.0]], n=2)(model, batch, ctx)

    def val_step(model, batch, ctx):
        return {"loss": torch.tensor(3.0), "n": 3}

    hist = fit(_linear(), _linear_batches(2), [None], epochs=1, device=cpu, step=train_step,
               val_step=val_step, checkpoint=tmp_path / "best.pt", dist=dist)
    assert wrapped == [True, True]
    assert hist["train_loss"] == [pytest.approx((2 * 1.0 + 2 * 4.0 + 2.0) / (4 + 2.0))]
    assert hist["val_loss"] == [pytest.approx((3 * 3.0 + 2.0) / (3 + 2.0))]
    assert capsys.readouterr().err == ""
    assert not (tmp_path / "best.pt").exists()


def test_the_all_reduce_gets_one_double_tensor_on_the_dists_device(cpu):
    """The meta device stands in for the GPU that NCCL needs the totals on; nothing is read
    back to the host before the all-reduce (meta tensors cannot be read at all)."""

    class Stop(Exception):
        pass

    class Recorder(_PeerDist):
        def all_reduce_sum(self, t):
            super().all_reduce_sum(t)
            raise Stop

    meta = torch.device("meta")
    on_cpu = Recorder(device=meta)
    with pytest.raises(Stop):
        evaluate(_linear(), [0], cpu, lambda m, b, c: {"loss": torch.tensor(1.0), "acc": 0.5},
                 dist=on_cpu)
    assert on_cpu.reduced == [(meta, torch.float64, (3,))]
    on_meta = Recorder(device=meta)

    def meta_step(model, batch, ctx):
        return {"loss": torch.ones((), device=meta), "n": torch.tensor(4, device=meta)}

    with pytest.raises(Stop):
        evaluate(_linear(), [0, 1], cpu, meta_step, dist=on_meta)
    assert on_meta.reduced == [(meta, torch.float64, (2,))]


def test_evaluate_with_a_single_process_dist_still_refuses_an_empty_loader(cpu):
    with pytest.raises(ValueError, match="empty"):
        evaluate(_linear(), [], cpu, dist=Dist())


# ----------------------------------------------------------------- averaging


def test_evaluate_averages_python_numbers_in_double_precision_weighted_by_n(cpu):
    """Metrics may be Python numbers; "n" may come first; a batch without "n" counts once."""
    outs = iter([{"n": 1, "loss": 2.0**24 + 1, "acc": 1.0}, {"loss": 0.0, "acc": 0.0},
                 {"n": 2, "loss": 3.0, "acc": 0.5}])
    means = evaluate(_linear(), [0, 1, 2], cpu, lambda m, b, c: next(outs))
    assert means == {"loss": (2.0**24 + 1 + 0.0 + 2 * 3.0) / 4, "acc": (1.0 + 0.0 + 1.0) / 4}


def test_float32_metrics_are_summed_in_double_precision(cpu):
    """2**24 + 1 is not a float32: a float32 running sum would lose the 1."""
    values = iter([2.0**24, 1.0])
    means = evaluate(_linear(), [0, 1], cpu,
                     lambda m, b, c: {"loss": torch.tensor(next(values), dtype=torch.float32)})
    assert means == {"loss": (2.0**24 + 1.0) / 2}


def test_sums_are_double_except_on_mps_which_has_no_float64():
    sum_dtype = tl_course.train._sum_dtype
    assert sum_dtype(torch.device("mps")) == torch.float32
    assert sum_dtype(torch.device("cpu")) == torch.float64
    assert sum_dtype(torch.device("cuda")) == torch.float64


# ----------------------------------------------------------------- History


def test_history_extend_appends_epochs_and_shifts_the_best_epoch():
    head, body = History(), History()
    for v in (3.0, 2.0):
        head.add("val_loss", v)
        head.add("seconds", 1.0)
    head.best_epoch = 1
    for v in (2.5, 1.0, 1.5):
        body.add("val_loss", v)
        body.add("train_acc", 0.5)
        body.add("seconds", 1.0)
    body.best_epoch = 1
    assert head.extend(body) is head
    assert head["val_loss"] == [3.0, 2.0, 2.5, 1.0, 1.5]
    assert head["train_acc"] == [0.5] * 3
    assert head.epochs == 5 and head.best_epoch == 3
    assert head.last("val_loss") == 1.5
    no_best = History(metrics={"val_loss": [9.0], "seconds": [1.0]})
    assert head.extend(no_best).best_epoch == 3  # a run without a best keeps the earlier one


def test_history_summary_shows_total_time_and_last_values_but_not_seconds():
    h = History()
    for loss, acc, secs in ((0.9, 0.25, 1.25), (0.5, 0.75, 2.0)):
        h.add("train_loss", loss)
        h.add("val_acc", acc)
        h.add("seconds", secs)
    h.metrics["unused"] = []
    assert h.summary() == "2 epochs in 3.2s | train_loss=0.5000 val_acc=0.7500"
    assert History().summary() == "0 epochs in 0.0s | "


# ----------------------------------------------------------------- saving and loading


def test_save_atomic_creates_missing_folders_and_writes_to_a_hidden_temp_file_beside(
        tmp_path, monkeypatch):
    """While writing, only a hidden temp file in the target's own folder exists (so that the
    rename is atomic and no half-written file is visible)."""
    path = tmp_path / "a" / "b" / "m.pt"
    real_save, during = torch.save, []

    def spy(obj, f, *args, **kwargs):
        during.append(sorted(p.name for p in path.parent.iterdir()))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", spy)
    assert save_atomic({"w": torch.ones(2)}, path) == path
    (written,) = during
    assert len(written) == 1 and written[0].startswith(".m.pt.")
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))


def test_a_failed_save_whose_temp_file_is_already_gone_raises_the_original_error(
        tmp_path, monkeypatch):
    def save_then_fail(obj, f, *args, **kwargs):
        os.remove(f)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({}, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_written_on_a_gpu_loads_on_the_cpu_by_default(tmp_path, monkeypatch):
    """The file is tagged as GPU storage (as torch.save tags CUDA tensors); without CUDA,
    torch.load would refuse it unless told to map it to the CPU."""
    import torch.serialization as ser

    monkeypatch.setattr(ser, "_package_registry", list(ser._package_registry))
    ser.register_package(1, lambda s: "cuda:0" if s.device.type == "cpu" else None,
                         lambda s, location: None)
    seed_everything(0)
    model = _small_mlp()
    path = save_checkpoint(model, tmp_path / "m.pt")
    monkeypatch.setattr(ser, "_package_registry", [e for e in ser._package_registry
                                                   if e[0] != 1])
    fresh = load_checkpoint(_small_mlp(), path)
    assert _same(_state(fresh), _state(model))
    assert all(v.device.type == "cpu" for v in fresh.state_dict().values())


_UNPICKLED = []


def _unpickle_hook(note):
    _UNPICKLED.append(note)


class _Payload:
    def __reduce__(self):
        return (_unpickle_hook, ("code ran",))


def test_load_checkpoint_runs_no_pickled_code_even_where_torch_would(tmp_path, monkeypatch):
    """torch.load's default was weights_only=False before torch 2.6 (and can be forced so by
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD): load_checkpoint must ask for weights only itself."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    model = _small_mlp()
    state = {**model.state_dict(), "payload": _Payload()}
    torch.save(state, tmp_path / "evil.pt")
    _UNPICKLED.clear()
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(_small_mlp(), tmp_path / "evil.pt")
    assert _UNPICKLED == []


def test_a_plain_fit_warns_nothing(cpu):
    """The restore_best notice is for restore_best only: a plain run stays quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(_linear(), _linear_batches(2), epochs=1, device=cpu, progress=False)
