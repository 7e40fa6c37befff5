"""What `fit`, `evaluate` and `predict` promise, checked against plain-torch references.

Only the public behaviour is tested here (not how fit is built inside): three steps of
fit leave the parameters a bare three-step loop leaves, evaluation is deterministic with
dropout and BatchNorm, restore_best gives back the best epoch's weights, early stopping
stops after exactly `patience` stale epochs, a loss is minimised and anything else
maximised.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tl_course.models import DigitCNN
from tl_course.train import StepContext, accuracy, evaluate, fit, load_checkpoint, predict


def _batches(n_batches: int = 3, size: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(size, 1, 28, 28, generator=gen) * 2,
             torch.randint(0, 10, (size,), generator=gen)) for _ in range(n_batches)]


def _model(seed: int = 0, dropout: float = 0.0) -> DigitCNN:
    torch.manual_seed(seed)
    return DigitCNN(width=4, dropout=dropout)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: nn.Module | dict, b: nn.Module | dict, atol: float = 1e-6) -> None:
    a = a if isinstance(a, dict) else _state(a)
    b = b if isinstance(b, dict) else _state(b)
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], atol=atol, rtol=1e-5), k
        else:
            assert torch.equal(a[k], b[k]), k


def _bare_loop(model: nn.Module, batches, optimizer, epochs: int = 1, scheduler=None) -> None:
    """The textbook loop: zero_grad, forward, cross-entropy, backward, step."""
    for _ in range(epochs):
        model.train()
        for x, y in batches:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()


# ----------------------------------------------------------------- fit = the bare loop


def test_three_steps_of_fit_equal_a_bare_three_step_loop_with_fits_default_optimizer(cpu):
    batches = _batches()
    model, reference = _model(), _model()
    fit(model, batches, epochs=1, device=cpu, lr=3e-3, weight_decay=0.05, progress=False)
    _bare_loop(reference, batches,
               torch.optim.AdamW(reference.parameters(), lr=3e-3, weight_decay=0.05))
    _assert_same_state(model, reference)
    assert not torch.equal(_state(model)["head.1.weight"], _state(_model())["head.1.weight"])


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)


def _alternating_heads(model, x, i):
    """Batch i uses head a when i is even, head b when odd: the other head gets no gradient."""
    return (model.a if i % 2 == 0 else model.b)(x)


def test_fit_defaults_to_adamw_lr_1e3_no_decay_and_skips_parameters_left_without_grads(cpu):
    """Defaults pinned by behaviour: AdamW(lr=1e-3, weight_decay=0). Gradients are reset to
    None before each step, so a head the step leaves unused is not moved by Adam's momentum
    (zero gradients would move it)."""
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(5, 4, generator=gen), torch.randint(0, 3, (5,), generator=gen))
               for _ in range(4)]

    def step(model, batch, ctx):
        x, y = batch
        return {"loss": F.cross_entropy(_alternating_heads(model, x, ctx.batch), y), "n": 5}

    model, reference = _TwoHeads(), _TwoHeads()
    fit(model, batches, epochs=1, device=cpu, step=step, progress=False)
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-3, weight_decay=0.0)
    for i, (x, y) in enumerate(batches):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(_alternating_heads(reference, x, i), y).backward()
        opt.step()
    _assert_same_state(model, reference)
    assert not torch.equal(model.a.weight, _TwoHeads().a.weight)


def test_fit_with_a_given_optimizer_equals_the_bare_loop(cpu):
    """SGD with momentum: gradients left over from a previous step would change the result."""
    batches = _batches()
    model, reference = _model(), _model()
    fit(model, batches, epochs=1, device=cpu, progress=False,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    _bare_loop(reference, batches,
               torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9))
    _assert_same_state(model, reference)


def test_fit_steps_the_scheduler_once_per_epoch(cpu):
    batches = _batches(2)
    model, reference = _model(), _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    history = fit(model, batches, epochs=3, device=cpu, optimizer=opt, progress=False,
                  scheduler=torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    _bare_loop(reference, batches, ref_opt, epochs=3,
               scheduler=torch.optim.lr_scheduler.StepLR(ref_opt, step_size=1, gamma=0.5))
    _assert_same_state(model, reference)
    assert history["lr"] == pytest.approx([0.1, 0.05, 0.025])


def test_validating_between_epochs_changes_nothing_in_training(cpu):
    """Epoch 2 trains in train mode again after epoch 1's validation (BatchNorm on batch
    statistics), and validation leaves no gradient or statistic behind."""
    batches = _batches(2)
    x, y = _val_data()
    model, reference = _model(), _model()
    fit(model, batches, [(x, y)], epochs=2, device=cpu, lr=1e-2, progress=False)
    _bare_loop(reference, batches,
               torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.0), epochs=2)
    _assert_same_state(model, reference)


def test_fit_only_updates_trainable_parameters(cpu):
    model = _model()
    model.blocks.requires_grad_(False)
    frozen = {k: v.clone() for k, v in model.blocks.named_parameters()}
    fit(model, _batches(), epochs=1, device=cpu, lr=1e-2, weight_decay=0.1, progress=False)
    assert all(torch.equal(frozen[k], v) for k, v in model.blocks.named_parameters())


def test_train_metrics_are_the_example_weighted_means_over_the_epoch(cpu):
    """Uneven batches: the epoch's loss is the mean over examples, not over batches."""
    batches = [(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long)),
               (torch.zeros(1, 2), torch.ones(1, dtype=torch.long))]
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([2.0, 0.0]))
    history = fit(model, batches, epochs=1, device=cpu, progress=False,
                  optimizer=torch.optim.SGD(model.parameters(), lr=0.0))
    ce = lambda z, y: F.cross_entropy(z.view(1, 2), torch.tensor([y])).item()
    z = torch.tensor([2.0, 0.0])
    assert history["train_loss"][0] == pytest.approx((3 * ce(z, 0) + ce(z, 1)) / 4, rel=1e-6)
    assert history["train_acc"][0] == pytest.approx(3 / 4)


# ----------------------------------------------------------------- evaluation


def _val_data(n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return torch.rand(n, 1, 28, 28, generator=gen) * 3, torch.arange(n) % 10


def test_evaluate_is_deterministic_with_dropout_and_batchnorm_and_changes_nothing(cpu):
    model = _model(dropout=0.5)
    fit(model, _batches(), epochs=1, device=cpu, lr=1e-2, progress=False)  # stats move
    model.train()
    x, y = _val_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=4)  # batches of 4, 4, 2
    before = _state(model)
    first, second = evaluate(model, loader, cpu), evaluate(model, loader, cpu)
    assert first == second
    _assert_same_state(before, model, atol=0.0)  # running statistics untouched
    with torch.no_grad():
        logits = copy.deepcopy(model).eval()(x)
    assert first["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert first["acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())


def test_predict_and_accuracy_use_the_eval_mode_model_in_loader_order(cpu):
    model = _model(dropout=0.5)
    fit(model, _batches(), epochs=1, device=cpu, lr=1e-2, progress=False)
    model.train()
    x, y = _val_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    before = _state(model)
    logits, labels = predict(model, loader, cpu)
    again, _ = predict(model.train(), loader, cpu)
    assert torch.equal(logits, again) and torch.equal(labels, y)
    _assert_same_state(before, model, atol=0.0)
    with torch.no_grad():
        want = copy.deepcopy(model).eval()(x)
    assert torch.allclose(logits, want, atol=1e-6)
    assert accuracy(model, loader, cpu) == pytest.approx(
        (want.argmax(1) == y).float().mean().item())


def test_evaluate_runs_the_step_without_gradients_and_in_evaluation(cpu):
    seen = []

    def step(model, batch, ctx: StepContext):
        seen.append((ctx.training, torch.is_grad_enabled(), model.training))
        return {"loss": torch.zeros(()), "n": 1}

    evaluate(_model().train(), [0, 1], cpu, step)
    assert seen == [(False, False, False)] * 2


# ----------------------------------------------------------------- monitoring


def _scripted(values: list[float], key: str = "loss"):
    """A validation step whose metric `key` is values[epoch]: fit's choices become exact."""
    calls = iter(values)

    def step(model, batch, ctx):
        v = torch.tensor(float(next(calls)))
        return {"loss": v, key: v, "n": 1} if key != "loss" else {"loss": v, "n": 1}

    return step


def _fit_scripted(model, values, *, key="loss", epochs=None, **kwargs):
    return fit(model, _batches(2), [None], epochs=epochs or len(values), device=torch.device("cpu"),
               lr=1e-2, val_step=_scripted(values, key), progress=False, **kwargs)


def test_restore_best_gives_back_the_best_epochs_weights_and_buffers():
    """Validation loss is lowest after epoch 2 of 5: the weights after a 2-epoch run."""
    model = _model()
    history = _fit_scripted(model, [3.0, 1.0, 2.0, 4.0, 5.0], restore_best=True)
    assert history.epochs == 5 and history.best_epoch == 1
    reference = _model()
    fit(reference, _batches(2), epochs=2, device=torch.device("cpu"), lr=1e-2, progress=False)
    _assert_same_state(model, reference, atol=1e-7)


def test_without_restore_best_the_last_weights_stay():
    model = _model()
    _fit_scripted(model, [3.0, 1.0, 2.0])
    reference = _model()
    fit(reference, _batches(2), epochs=3, device=torch.device("cpu"), lr=1e-2, progress=False)
    _assert_same_state(model, reference, atol=1e-7)


def test_the_checkpoint_holds_the_best_epochs_weights(tmp_path):
    path = tmp_path / "best.pt"
    model = _model()
    _fit_scripted(model, [3.0, 1.0, 2.0, 4.0], checkpoint=path, restore_best=True)
    saved = load_checkpoint(_model(seed=9), path)
    _assert_same_state(saved, model, atol=0.0)


@pytest.mark.parametrize("values, patience, epochs_run", [
    ([5, 4, 4.5, 4.2, 4.1, 3, 2, 1], 3, 5),  # best at epoch 2, then 3 stale
    ([5, 4, 4.5, 4.2, 4.1, 3, 2, 1], 1, 3),
    ([5, 6, 4, 6, 6, 1, 1, 1], 2, 5),  # an improvement resets the count
    ([5, 4, 4, 4, 4, 1, 1, 1], 2, 4),  # an equal value is no improvement
    ([5, 4, 3, 2, 1, 0.5, 0.4, 0.3], 1, 8),  # always improving: every epoch runs
])
def test_early_stopping_stops_after_exactly_patience_stale_epochs(values, patience, epochs_run):
    history = _fit_scripted(_model(), values, patience=patience)
    assert history.epochs == epochs_run
    assert history["val_loss"] == pytest.approx(values[:epochs_run])


def test_a_loss_is_minimised_and_an_accuracy_maximised():
    accs = [0.1, 0.5, 0.3, 0.2, 0.4]
    history = _fit_scripted(_model(), accs, key="acc", monitor="val_acc", restore_best=True)
    assert history.best_epoch == 1
    stopped = _fit_scripted(_model(), accs, key="acc", monitor="val_acc", patience=2)
    assert stopped.epochs == 4
    losses = [0.5, 0.1, 0.3, 0.9, 0.2]
    assert _fit_scripted(_model(), losses, restore_best=True).best_epoch == 1
    # A metric whose name ends in "loss" is minimised too, whatever the key.
    assert _fit_scripted(_model(), losses, key="domain_loss", monitor="val_domain_loss",
                         restore_best=True).best_epoch == 1


def test_monitoring_the_training_loss_needs_no_validation():
    history = fit(_model(), _batches(2), epochs=3, device=torch.device("cpu"), lr=1e-2,
                  monitor="train_loss", restore_best=True, progress=False)
    losses = history["train_loss"]
    assert history.best_epoch == min(range(3), key=losses.__getitem__)
