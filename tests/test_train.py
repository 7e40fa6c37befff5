import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tl_course.device import seed_everything
from tl_course.models import MLP, DigitCNN
from tl_course.train import (
    History,
    StepContext,
    accuracy,
    classification_step,
    evaluate,
    fit,
    load_checkpoint,
    predict,
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
