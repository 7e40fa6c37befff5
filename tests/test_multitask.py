"""Multi-task learning: heads and losses line up or fail clearly, uncertainty weights learn,
PCGrad leaves no conflict, and fit's history keeps every task's metrics."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from tl_course.exercises import check_param_ratio, check_pcgrad_projection, check_turned_down
from tl_course.multimnist import IGNORE, MultiTaskDataset
from tl_course.multitask import (
    MultiTaskModel,
    TaskMismatchError,
    masked_cross_entropy,
    mtl_optimizer,
    mtl_step,
    multitask_cnn,
    param_ratio,
    pcgrad_project,
    single_task_models,
    task_accuracies,
)
from tl_course.train import StepContext, fit

TASKS = {"left": 10, "right": 10}
SMALL = {"width": 4, "feature_dim": 16}


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 28, 28, generator=gen)
    return x, {"left": torch.arange(16) % 10, "right": (torch.arange(16) * 3) % 10,
               "sum": torch.arange(16) % 19}


@pytest.fixture
def loader(batch):
    x, labels = batch
    return DataLoader(MultiTaskDataset(x, labels), batch_size=8)


def test_forward_gives_one_output_per_head_and_sharing_saves_parameters(batch):
    model = multitask_cnn(TASKS, **SMALL)
    out = model(batch[0])
    assert set(out) == {"left", "right"} and out["left"].shape == (16, 10)
    ratio = param_ratio(model, single_task_models(TASKS, **SMALL).values())
    assert 0.5 < ratio < 0.6


def test_fit_history_keeps_every_tasks_loss_and_accuracy(loader, cpu):
    model = multitask_cnn(TASKS, **SMALL)
    history = fit(model, loader, loader, epochs=2, device=cpu, step=mtl_step(), progress=False)
    for split in ("train", "val"):
        for key in ("left_loss", "left_acc", "right_loss", "right_acc", "loss"):
            assert len(history[f"{split}_{key}"]) == 2
    accs = task_accuracies(model, loader, cpu)
    assert set(accs) == {"left", "right"} and all(0 <= a <= 1 for a in accs.values())


def test_uncertainty_weights_are_learnable_and_move(loader, cpu):
    torch.manual_seed(0)
    model = multitask_cnn(TASKS, uncertainty=True, **SMALL)
    params = {id(p) for p in model.parameters()}
    assert all(id(s) in params for s in model.log_vars.values())
    before = {t: s.item() for t, s in model.log_vars.items()}
    history = fit(model, loader, epochs=3, device=cpu, optimizer=mtl_optimizer(model, 1e-2),
                  step=mtl_step(weighting="uncertainty"), progress=False)
    after = {t: s.item() for t, s in model.log_vars.items()}
    assert all(abs(after[t] - before[t]) > 1e-3 for t in TASKS)
    assert history["train_left_weight"][-1] == pytest.approx(
        torch.exp(-model.log_vars["left"]).item(), rel=0.2)
    # The loss is exp(-s) L + s / 2: check it on one batch by hand.
    x, labels = next(iter(loader))
    out = mtl_step(weighting="uncertainty")(model, (x, labels), StepContext(cpu, False))
    expected = sum(torch.exp(-s) * out[f"{t}_loss"] + 0.5 * s for t, s in model.log_vars.items())
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_pcgrad_projection_leaves_no_negative_inner_product():
    gen = torch.Generator().manual_seed(0)
    conflicts = 0
    for _ in range(50):
        g1, g2 = torch.randn(20, generator=gen), torch.randn(20, generator=gen)
        p1, p2 = pcgrad_project([g1, g2], gen)
        assert p1 @ g2 >= -1e-5 and p2 @ g1 >= -1e-5
        if g1 @ g2 < 0:
            conflicts += 1
            assert p1 @ g2 == pytest.approx(0.0, abs=1e-5)
            assert torch.allclose(p1, g1 - (g1 @ g2) / (g2 @ g2) * g2, atol=1e-5)
        else:
            assert torch.equal(p1, g1) and torch.equal(p2, g2)
    assert conflicts > 5  # the loop really exercised the projection


def test_pcgrad_step_sets_projected_trunk_gradients_and_own_head_gradients(batch, cpu):
    torch.manual_seed(0)
    model = multitask_cnn(TASKS, **SMALL)
    shared = model.shared_parameters()
    # Per-task trunk gradients, computed independently.
    out = model(batch[0])
    per_task = []
    for t in TASKS:
        g = torch.autograd.grad(masked_cross_entropy(out[t], batch[1][t]), shared,
                                retain_graph=True)
        per_task.append(torch.cat([x.reshape(-1) for x in g]))
    head_grad = torch.autograd.grad(masked_cross_entropy(out["left"], batch[1]["left"]),
                                    model.heads["left"].weight)[0]
    model.zero_grad(set_to_none=True)
    ctx = StepContext(cpu, True)
    mtl_step(weighting="pcgrad")(model, batch, ctx)
    assert ctx.grads_ready
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    expected = torch.stack(pcgrad_project(per_task)).sum(0)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(model.heads["left"].weight.grad, head_grad, atol=1e-6)


def test_pcgrad_trains_through_fit(loader, cpu):
    model = multitask_cnn(TASKS, **SMALL)
    history = fit(model, loader, epochs=2, device=cpu, step=mtl_step(weighting="pcgrad"),
                  progress=False)
    assert history["train_loss"][-1] < history["train_loss"][0] + 1.0


def test_ignored_labels_do_not_count(cpu):
    logits = torch.randn(4, 10, requires_grad=True)
    labels = torch.tensor([1, IGNORE, 3, IGNORE])
    assert masked_cross_entropy(logits, labels).item() == pytest.approx(
        nn.functional.cross_entropy(logits[[0, 2]], labels[[0, 2]]).item())
    none = masked_cross_entropy(logits, torch.full((4,), IGNORE))
    none.backward()
    assert none.item() == 0.0 and torch.all(logits.grad == 0)


def test_extra_labels_in_the_batch_are_ignored(batch, cpu):
    model = multitask_cnn({"left": 10}, **SMALL)
    out = mtl_step()(model, batch, StepContext(cpu, True))
    assert "left_acc" in out and "sum_acc" not in out


def test_a_head_with_no_loss_raises(batch, cpu):
    model = multitask_cnn(TASKS, **SMALL)
    step = mtl_step(losses={"left": masked_cross_entropy})
    with pytest.raises(TaskMismatchError, match=r"head\(s\) with no loss: \['right'\]"):
        step(model, batch, StepContext(cpu, True))


def test_a_loss_with_no_head_raises(batch, cpu):
    model = multitask_cnn({"left": 10}, **SMALL)
    step = mtl_step(losses={"left": masked_cross_entropy, "colour": masked_cross_entropy})
    with pytest.raises(TaskMismatchError, match=r"loss\(es\) with no head: \['colour'\]"):
        step(model, batch, StepContext(cpu, True))


def test_a_head_with_no_labels_raises(batch, cpu):
    model = multitask_cnn({"left": 10, "parity": 2}, **SMALL)
    with pytest.raises(TaskMismatchError, match=r"no labels for head\(s\) \['parity'\]"):
        mtl_step()(model, batch, StepContext(cpu, True))


def test_bad_weights_and_settings_raise(batch, cpu):
    model = multitask_cnn(TASKS, **SMALL)
    with pytest.raises(TaskMismatchError, match="one weight per head"):
        mtl_step(weights={"left": 1.0})(model, batch, StepContext(cpu, True))
    with pytest.raises(ValueError, match="unknown weighting 'gradnorm'"):
        mtl_step(weighting="gradnorm")
    with pytest.raises(ValueError, match=">= 0"):
        mtl_step(weights={"left": -1.0, "right": 1.0})
    with pytest.raises(ValueError, match="uncertainty=True"):
        mtl_step(weighting="uncertainty")(model, batch, StepContext(cpu, True))
    with pytest.raises(TaskMismatchError, match=r"\(images, \{task: labels\}\)"):
        mtl_step()(model, (batch[0], batch[1]["left"]), StepContext(cpu, True))
    with pytest.raises(ValueError, match="at least one head"):
        MultiTaskModel(nn.Identity(), {})


def test_fixed_weights_scale_the_loss(batch, cpu):
    torch.manual_seed(0)
    model = multitask_cnn(TASKS, **SMALL).eval()
    out = mtl_step(weights={"left": 2.0, "right": 0.0})(model, batch, StepContext(cpu, False))
    assert out["loss"].item() == pytest.approx(2 * out["left_loss"].item(), rel=1e-5)


def test_exercise_checks(capsys):
    shared = multitask_cnn(TASKS, **SMALL)
    singles = list(single_task_models(TASKS, **SMALL).values())
    right = param_ratio(shared, singles)
    assert check_param_ratio(right, shared, singles) is True
    assert check_param_ratio(1 / right, shared, singles) is False
    assert check_param_ratio(..., shared, singles) is False

    def project(g1, g2):
        dot = g1 @ g2
        return g1 - dot / (g2 @ g2) * g2 if dot < 0 else g1

    assert check_pcgrad_projection(project) is True
    assert check_pcgrad_projection(lambda g1, g2: g1) is False
    assert check_pcgrad_projection(lambda g1, g2: 1 / 0) is False  # feedback, not an exception
    weights = {"left": 1.2, "right": 1.1, "noise": 0.2}
    assert check_turned_down("noise", weights) is True
    assert check_turned_down("left", weights) is False
    assert check_turned_down("colour", weights) is False
    out = capsys.readouterr().out
    assert "[correct]" in out and "[not yet]" in out and "[todo]" in out
