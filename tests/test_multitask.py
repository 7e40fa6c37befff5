"""Multi-task learning: heads and losses line up or fail clearly, uncertainty weights learn,
PCGrad leaves no conflict, and fit's history keeps every task's metrics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from tl_course.exercises import check_param_ratio, check_pcgrad_projection, check_turned_down
from tl_course.multimnist import IGNORE, MultiTaskDataset
from tl_course.multitask import (
    MultiTaskModel,
    TaskMismatchError,
    digit_trunk,
    masked_accuracy,
    masked_cross_entropy,
    mtl_optimizer,
    mtl_step,
    multitask_cnn,
    param_ratio,
    pcgrad_project,
    single_task_models,
    task_accuracies,
    trunk_dim,
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


# ----------------------------------------------------------------- defects (issue 17, part 3)


def _reference_projection(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    g1, g2 = g1.double(), g2.double()
    dot = g1 @ g2
    return g1 - dot / (g2 @ g2) * g2 if dot < 0 else g1


@pytest.mark.parametrize("scale", [1e-7, 1e-9])
def test_pcgrad_projects_tiny_gradients_by_the_right_amount(scale):
    """Late in training without a loss scaler, gradients may have norms far below 1e-6."""
    gen = torch.Generator().manual_seed(1)
    g1 = torch.randn(30, generator=gen)
    g2 = -0.8 * g1 + 0.6 * torch.randn(30, generator=gen)
    assert g1 @ g2 < 0
    p1, p2 = pcgrad_project([g1 * scale, g2 * scale])
    assert torch.allclose(p1.double(), _reference_projection(g1, g2) * scale,
                          rtol=1e-4, atol=0.0)
    assert torch.allclose(p2.double(), _reference_projection(g2, g1) * scale,
                          rtol=1e-4, atol=0.0)
    assert abs(float(p1.double() @ g2.double())) < 1e-4 * float(g1.norm() * g2.norm()) * scale


def test_pcgrad_leaves_a_zero_gradient_and_its_partner_alone():
    g = torch.randn(8)
    p_zero, p_g = pcgrad_project([torch.zeros(8), g])
    assert torch.equal(p_zero, torch.zeros(8)) and torch.equal(p_g, g)


# ----------------------------------------------------------------- defining properties (issue 17)


def _reference_pcgrad(grads, generator):
    """Yu et al. (2020), Algorithm 1, written out: for each task i, visit the other tasks
    in the generator's random order and project task i's *already projected* gradient
    against each other task's *original* gradient when they conflict."""
    out = []
    n = len(grads)
    for i in range(n):
        g = grads[i].double().clone()
        for j in torch.randperm(n, generator=generator).tolist():
            if j == i:
                continue
            other = grads[j].double()
            dot = g @ other
            if dot < 0:
                g = g - dot / (other @ other) * other
        out.append(g)
    return out


def _conflicting(n_tasks: int, dim: int = 12, seed: int = 0) -> list[torch.Tensor]:
    """Every pair of task gradients truly conflicts: three spread around a circle (cosine
    about -0.5), or four towards a tetrahedron's corners (cosine about -1/3), with
    different lengths and a little noise in the other dimensions."""
    gen = torch.Generator().manual_seed(seed)
    if n_tasks == 4:
        corners = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    else:
        angles = [2 * math.pi * t / n_tasks for t in range(n_tasks)]
        corners = torch.tensor([[math.cos(a), math.sin(a), 0.0] for a in angles])
    grads = []
    for t in range(n_tasks):
        g = 0.02 * torch.randn(dim, generator=gen)
        g[:3] += corners[t] * (1 + 0.3 * t)
        grads.append(g)
    return grads


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("n_tasks, seed", [(3, 0), (3, 7), (4, 1)])
def test_pcgrad_matches_the_sequential_reference_on_truly_conflicting_tasks(n_tasks, seed):
    grads = _conflicting(n_tasks)
    conflicts = [_cos(grads[i], grads[j]) for i in range(n_tasks) for j in range(i)]
    assert all(c < -0.3 for c in conflicts)  # every pair truly conflicts
    got = pcgrad_project(grads, torch.Generator().manual_seed(seed))
    want = _reference_pcgrad(grads, torch.Generator().manual_seed(seed))
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g.double(), w, atol=1e-6)
    # The sequential projection is not the "plain" one (every projection from g_i itself).
    plain = []
    for i, gi in enumerate(grads):
        g = gi.double().clone()
        for j, gj in enumerate(grads):
            if j != i and gi @ gj < 0:
                g = g - (gi.double() @ gj.double()) / (gj.double() @ gj.double()) * gj.double()
        plain.append(g)
    assert any(not torch.allclose(p, w, atol=1e-4) for p, w in zip(plain, want, strict=True))


def test_pcgrad_visiting_order_comes_from_the_generator():
    grads = _conflicting(3)
    results = {tuple(torch.cat(pcgrad_project(grads, torch.Generator().manual_seed(s)))
                     .round(decimals=5).tolist()) for s in range(8)}
    assert len(results) > 1  # the order matters with three conflicting tasks
    a = pcgrad_project(grads, torch.Generator().manual_seed(3))
    b = pcgrad_project(grads, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_pcgrad_passes_agreeing_gradients_through_unchanged():
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(10, generator=gen)
    grads = [base + 0.3 * torch.randn(10, generator=gen) for _ in range(4)]
    assert all(grads[i] @ grads[j] > 0 for i in range(4) for j in range(i))
    out = pcgrad_project(grads, gen)
    assert all(torch.equal(o, g) for o, g in zip(out, grads, strict=True))
    # inputs are never modified in place
    g1, g2 = _conflicting(2)
    k1, k2 = g1.clone(), g2.clone()
    pcgrad_project([g1, g2])
    assert torch.equal(g1, k1) and torch.equal(g2, k2)


def _three_conflicting_tasks_model():
    """Three identical 3-class heads with labels y, y+1, y+2 (mod 3): near-uniform
    predictions make the tasks' trunk gradients conflict (every cosine below -0.3 with
    this seed, which the tests check)."""
    torch.manual_seed(2)
    model = multitask_cnn({"a": 3, "b": 3, "c": 3}, **SMALL)
    with torch.no_grad():
        model.heads["a"].weight.mul_(0.1)
        for t in ("b", "c"):
            model.heads[t].weight.copy_(model.heads["a"].weight)
            model.heads[t].bias.copy_(model.heads["a"].bias)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(12, 1, 28, 28, generator=gen)
    y = torch.arange(12) % 3
    return model, (x, {"a": y, "b": (y + 1) % 3, "c": (y + 2) % 3})


def test_pcgrad_step_on_three_conflicting_tasks_matches_the_reference(cpu):
    model, batch = _three_conflicting_tasks_model()
    shared = model.shared_parameters()
    out = model(batch[0])
    per_task, heads = [], {}
    for t in ("a", "b", "c"):
        loss = masked_cross_entropy(out[t], batch[1][t])
        g = torch.autograd.grad(loss, shared + list(model.heads[t].parameters()),
                                retain_graph=True)
        per_task.append(torch.cat([x.reshape(-1) for x in g[:len(shared)]]))
        heads[t] = g[len(shared):]
    assert all(_cos(per_task[i], per_task[j]) < -0.3 for i in range(3) for j in range(i))
    model.zero_grad(set_to_none=True)
    mtl_step(weighting="pcgrad", seed=4)(model, batch, StepContext(cpu, True))
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    want = torch.stack(_reference_pcgrad(per_task, torch.Generator().manual_seed(4))).sum(0)
    assert torch.allclose(got.double(), want, atol=1e-6)
    for t in ("a", "b", "c"):  # each head: its own task's plain gradient
        for p, g in zip(model.heads[t].parameters(), heads[t], strict=True):
            assert torch.allclose(p.grad, g, atol=1e-6)


def test_pcgrad_step_leaves_backward_to_itself_and_fit_applies_its_gradients(cpu):
    """Through fit with plain SGD, one PCGrad step moves the trunk by -lr * the projected
    sum, not by the plain sum of the task gradients."""
    import copy

    model, batch = _three_conflicting_tasks_model()
    start = copy.deepcopy(model)
    shared = start.shared_parameters()
    out = start(batch[0])
    per_task = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        masked_cross_entropy(out[t], batch[1][t]), shared, retain_graph=True)])
        for t in ("a", "b", "c")]
    want = torch.stack(_reference_pcgrad(per_task, torch.Generator().manual_seed(0))).sum(0)
    fit(model, [batch], epochs=1, device=cpu, step=mtl_step(weighting="pcgrad"),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5), progress=False)
    moved = torch.cat([(a - b).reshape(-1) for a, b in
                       zip(model.shared_parameters(), shared, strict=True)])
    assert torch.allclose(moved.double(), -0.5 * want, atol=1e-5)


def test_uncertainty_gradient_on_each_log_variance_is_analytic(batch, cpu):
    """Kendall et al.'s exp(-s) L + s / 2: d loss / d s_t = 0.5 - exp(-s_t) L_t, and the
    head's gradient is exp(-s_t) times its task's plain gradient."""
    torch.manual_seed(0)
    model = multitask_cnn(TASKS, uncertainty=True, **SMALL)
    with torch.no_grad():
        model.log_vars["left"].fill_(0.7)
        model.log_vars["right"].fill_(-0.4)
    out = mtl_step(weighting="uncertainty")(model, batch, StepContext(cpu, True))
    logits = model(batch[0])
    plain = {t: masked_cross_entropy(logits[t], batch[1][t]) for t in TASKS}
    out["loss"].backward()
    for t, s in (("left", 0.7), ("right", -0.4)):
        want = 0.5 - math.exp(-s) * plain[t].item()
        assert model.log_vars[t].grad.item() == pytest.approx(want, rel=1e-5)
        assert out[f"{t}_weight"].item() == pytest.approx(math.exp(-s), rel=1e-6)
        g = torch.autograd.grad(plain[t], model.heads[t].weight, retain_graph=True)[0]
        assert torch.allclose(model.heads[t].weight.grad, math.exp(-s) * g, atol=1e-6)
    total = sum(math.exp(-s) * plain[t].item() + s / 2
                for t, s in (("left", 0.7), ("right", -0.4)))
    assert out["loss"].item() == pytest.approx(total, rel=1e-5)
    assert model.task_weights() == pytest.approx({"left": math.exp(-0.7),
                                                  "right": math.exp(0.4)})


def test_mtl_optimizer_gives_log_variances_their_own_undecayed_faster_group():
    model = multitask_cnn(TASKS, uncertainty=True, **SMALL)
    opt = mtl_optimizer(model, lr=1e-3, weight_decay=0.05)
    main, log_vars = opt.param_groups
    assert main["lr"] == 1e-3 and main["weight_decay"] == 0.05
    assert log_vars["lr"] == pytest.approx(1e-2) and log_vars["weight_decay"] == 0.0
    assert {id(p) for p in log_vars["params"]} == {id(s) for s in model.log_vars.values()}
    everything = {id(p) for p in model.parameters()}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == everything
    assert mtl_optimizer(model, 1e-3, log_var_lr=0.5).param_groups[1]["lr"] == 0.5
    plain = mtl_optimizer(multitask_cnn(TASKS, **SMALL), lr=2e-3)
    assert len(plain.param_groups) == 1


def test_equal_weighting_gradient_is_the_weighted_sum_of_task_gradients(batch, cpu):
    torch.manual_seed(0)
    model = multitask_cnn(TASKS, **SMALL)
    out = mtl_step(weights={"left": 0.3, "right": 2.0})(model, batch, StepContext(cpu, True))
    shared = model.shared_parameters()
    got = torch.autograd.grad(out["loss"], shared)
    logits = model(batch[0])
    want = torch.autograd.grad(0.3 * masked_cross_entropy(logits["left"], batch[1]["left"])
                               + 2.0 * masked_cross_entropy(logits["right"], batch[1]["right"]),
                               shared)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-6)


def test_task_metrics_are_per_task_and_ignore_unlabelled_examples(cpu):
    model = MultiTaskModel(nn.Flatten(), {"left": nn.Identity(), "right": nn.Identity()})
    x = torch.tensor([[[0.0, 5.0, 1.0]], [[3.0, 0.0, 1.0]], [[0.0, 0.0, 9.0]],
                      [[1.0, 0.0, 0.0]]])  # argmax: 1, 0, 2, 0
    labels = {"left": torch.tensor([1, 1, 2, IGNORE]), "right": torch.tensor([0, 0, 0, 0])}
    out = mtl_step()(model, (x, labels), StepContext(cpu, False))
    assert out["left_acc"].item() == pytest.approx(2 / 3)
    assert out["right_acc"].item() == pytest.approx(2 / 4)
    logits = x.flatten(1)
    assert out["left_loss"].item() == pytest.approx(
        nn.functional.cross_entropy(logits[:3], labels["left"][:3]).item(), rel=1e-6)
    accs = task_accuracies(model, [(x, labels)], cpu)
    assert accs == pytest.approx({"left": 2 / 3, "right": 0.5})


def test_shared_parameters_are_the_trunks_trainable_ones():
    model = multitask_cnn(TASKS, **SMALL)
    model.trunk[0].requires_grad_(False)
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(p) for p in model.trunk.parameters() if p.requires_grad}
    assert not shared & {id(p) for p in model.heads.parameters()}


def test_pcgrad_keeps_dtypes_and_leaves_small_agreeing_gradients_alone():
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(6, generator=gen, dtype=torch.float64) * 0.01
    grads = [base + 0.002 * torch.randn(6, generator=gen, dtype=torch.float64)
             for _ in range(3)]  # agree, with inner products far below 1
    assert all(0 < grads[i] @ grads[j] < 1e-2 for i in range(3) for j in range(i))
    out = pcgrad_project(grads, gen)
    assert all(o.dtype == torch.float64 for o in out)
    assert all(torch.allclose(o, g, rtol=1e-6, atol=0) for o, g in zip(out, grads, strict=True))
    g1, g2 = _conflicting(2)
    p1, _ = pcgrad_project([g1.double(), g2.double()])
    assert p1.dtype == torch.float64
    assert torch.allclose(p1, _reference_projection(g1, g2), atol=1e-5)


def test_pcgrad_step_under_a_loss_scaler_sets_scaled_projected_gradients(cpu):
    """With an active GradScaler the step differentiates scaler.scale(term) per task, so
    fit's scaler.step sees gradients scaled like those of a plain backward."""
    model, batch = _three_conflicting_tasks_model()
    shared = model.shared_parameters()
    out = model(batch[0])
    per_task = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        masked_cross_entropy(out[t], batch[1][t]), shared, retain_graph=True)])
        for t in ("a", "b", "c")]
    head = torch.autograd.grad(masked_cross_entropy(out["b"], batch[1]["b"]),
                               model.heads["b"].weight)[0]
    want = torch.stack(_reference_pcgrad(per_task, torch.Generator().manual_seed(0))).sum(0)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    assert scaler.is_enabled()
    model.zero_grad(set_to_none=True)
    mtl_step(weighting="pcgrad")(model, batch, StepContext(cpu, True, scaler=scaler))
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    assert torch.allclose(got.double(), 8.0 * want, atol=1e-5)
    assert torch.allclose(model.heads["b"].weight.grad, 8.0 * head, atol=1e-5)


def test_pcgrad_step_sums_the_tasks_gradients_on_a_parameter_outside_the_trunk(cpu):
    """Two heads sharing one layer: its gradient is the plain sum of both tasks'."""
    torch.manual_seed(0)
    shared_head = nn.Linear(6, 3)
    model = MultiTaskModel(nn.Sequential(nn.Flatten(), nn.Linear(12, 6)),
                           {"a": shared_head, "b": shared_head})
    x = torch.randn(5, 1, 3, 4)
    labels = {"a": torch.tensor([0, 1, 2, 0, 1]), "b": torch.tensor([2, 2, 0, 1, 0])}
    out = model(x)
    want = sum(torch.autograd.grad(masked_cross_entropy(out[t], labels[t]),
                                   shared_head.weight, retain_graph=True)[0] for t in "ab")
    model.zero_grad(set_to_none=True)
    mtl_step(weighting="pcgrad")(model, (x, labels), StepContext(cpu, True))
    assert torch.allclose(shared_head.weight.grad, want, atol=1e-6)


def test_pcgrad_step_with_a_trunk_parameter_one_task_does_not_reach(cpu):
    """Task a reads only the first half of the trunk's output (its gradient on the other
    half's weights is zero), and one trunk layer is unused (autograd gives no gradient at
    all): the projection treats both as zeros."""

    class Halves(nn.Module):
        def __init__(self):
            super().__init__()
            self.left, self.right = nn.Linear(4, 3), nn.Linear(4, 3)
            self.spare = nn.Linear(2, 2)  # trainable but unused: no task's gradient reaches it

        def forward(self, x):
            x = x.flatten(1)
            return torch.cat([self.left(x), self.right(x)], 1)

    class Pick(nn.Module):
        def __init__(self, part):
            super().__init__()
            self.part, self.lin = part, nn.Linear(3 if part == "left" else 6, 2)

        def forward(self, z):
            return self.lin(z[:, :3] if self.part == "left" else z)

    torch.manual_seed(0)
    model = MultiTaskModel(Halves(), {"a": Pick("left"), "b": Pick("all")})
    x = torch.randn(6, 4)
    labels = {"a": torch.tensor([0, 1, 0, 1, 1, 0]), "b": torch.tensor([1, 0, 1, 1, 0, 0])}
    shared = model.shared_parameters()
    out = model(x)
    per_task = []
    for t in "ab":
        g = torch.autograd.grad(masked_cross_entropy(out[t], labels[t]), shared,
                                retain_graph=True, allow_unused=True)
        per_task.append(torch.cat([(q if q is not None else torch.zeros_like(p)).reshape(-1)
                                   for q, p in zip(g, shared, strict=True)]))
    want = torch.stack(_reference_pcgrad(per_task, torch.Generator().manual_seed(0))).sum(0)
    model.zero_grad(set_to_none=True)
    mtl_step(weighting="pcgrad")(model, (x, labels), StepContext(cpu, True))
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    assert torch.allclose(got.double(), want, atol=1e-6)


def test_digit_trunk_is_the_documented_network():
    """Three conv stages (5x5, 3x3, 3x3; 'same' padding, no bias before BatchNorm), 28 ->
    14 -> 7, average pooling to 3 x 3, a shared linear layer to 128 features."""
    trunk = digit_trunk()
    convs = [m for m in trunk if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding, c.bias is None)
            for c in convs] == [(1, 16, (5, 5), (2, 2), True), (16, 32, (3, 3), (1, 1), True),
                                (32, 64, (3, 3), (1, 1), True)]
    pools = [m for m in trunk if isinstance(m, nn.MaxPool2d)]
    assert [p.kernel_size for p in pools] == [2, 2]
    sizes, h = [], torch.rand(2, 1, 28, 28)
    for m in trunk:
        h = m(h)
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
            sizes.append(tuple(h.shape[-2:]))
    assert sizes == [(28, 28), (14, 14), (14, 14), (7, 7), (7, 7), (3, 3)]
    assert h.shape == (2, 128) == (2, trunk_dim())
    linear = [m for m in trunk if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(64 * 9, 128)]
    assert trunk_dim(16, None, 3) == 576 and trunk_dim(8, None, 2) == 128
    assert trunk_dim(8, 40, 2) == 40


def test_multitask_cnn_builds_heads_on_the_trunks_features_for_any_settings():
    model = multitask_cnn({"left": 10, "parity": 2}, width=4, feature_dim=None, grid=2)
    x = torch.rand(3, 1, 28, 28)
    out = model(x)
    assert out["left"].shape == (3, 10) and out["parity"].shape == (3, 2)
    assert model.features(x).shape == (3, 4 * 4 * 2 * 2)
    default = multitask_cnn({"left": 10})
    assert default.features(x).shape == (3, 128)
    assert count_parameters_of(default.trunk) == count_parameters_of(digit_trunk())


def count_parameters_of(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_mtl_step_settings_that_cannot_work_are_refused(batch, cpu):
    with pytest.raises(ValueError, match="learns its weights"):
        mtl_step(weighting="uncertainty", weights={"left": 1.0, "right": 1.0})
    model = multitask_cnn(TASKS, **SMALL)
    x, labels = batch
    with pytest.raises(TaskMismatchError, match=r"\(images, \{task: labels\}\) pairs"):
        mtl_step()(model, (x, labels, "extra"), StepContext(cpu, True))
    with pytest.raises(TaskMismatchError) as info:
        mtl_step(losses={"left": masked_cross_entropy})(model, batch, StepContext(cpu, True))
    assert "loss(es) with no head" not in str(info.value)
    with pytest.raises(ValueError, match="no parameters"):
        param_ratio(model, [])


def test_task_metrics_average_over_examples_not_batches(cpu):
    """Batches of 3 and 1: every example counts once in evaluate's means."""
    model = MultiTaskModel(nn.Flatten(), {"left": nn.Identity()})
    x = torch.tensor([[[5.0, 0.0]], [[5.0, 0.0]], [[5.0, 0.0]], [[0.0, 5.0]]])
    y = torch.tensor([0, 0, 0, 0])  # right, right, right, wrong
    loader = [(x[:3], {"left": y[:3]}), (x[3:], {"left": y[3:]})]
    assert task_accuracies(model, loader, cpu) == pytest.approx({"left": 0.75})


def test_masked_accuracy_of_an_unlabelled_batch_is_a_zero_scalar():
    acc = masked_accuracy(torch.randn(3, 4), torch.full((3,), IGNORE))
    assert acc.shape == () and acc.item() == 0.0


def test_mtl_optimizer_defaults():
    model = multitask_cnn(TASKS, uncertainty=True, **SMALL)
    main, log_vars = mtl_optimizer(model).param_groups
    assert main["lr"] == 1e-3 and main["weight_decay"] == 0.0
    assert log_vars["lr"] == pytest.approx(1e-2)
    main, log_vars = mtl_optimizer(model, lr=2e-3).param_groups
    assert main["lr"] == 2e-3 and log_vars["lr"] == pytest.approx(2e-2)


def test_model_settings_and_task_names():
    model = MultiTaskModel(nn.Flatten(), {"left": nn.Identity()})
    assert model.log_vars is None and model.task_weights() == {}
    for bad in ({"left digit": nn.Identity()}, {3: nn.Identity()}):
        with pytest.raises(ValueError, match="identifiers"):
            MultiTaskModel(nn.Flatten(), bad)
    assert trunk_dim(feature_dim=None) == 4 * 16 * 3 * 3


def test_a_loss_without_a_head_is_named_alone(batch, cpu):
    model = multitask_cnn({"left": 10}, **SMALL)
    step = mtl_step(losses={"left": masked_cross_entropy, "colour": masked_cross_entropy})
    with pytest.raises(TaskMismatchError) as info:
        step(model, batch, StepContext(cpu, True))
    assert "head(s) with no loss" not in str(info.value)
