"""Domain adaptation: gradient reversal, CORAL, AdaBN, the paired loader and DANN through fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import tl_course as tlc
from tl_course.adapt import (
    DANN,
    DomainDiscriminator,
    GradientReversal,
    PairedLoader,
    adapt_batchnorm,
    coral_loss,
    coral_step,
    dann_lambda,
    dann_step,
    domain_adversarial_loss,
    grad_reverse,
    oracle_step,
    source_only_step,
)
from tl_course.train import StepContext


def _rgb_digits(n: int, seed: int, shift: float = 0.0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 3, 28, 28, generator=gen) + shift).clamp(0, 1)
    return TensorDataset(x, torch.arange(n) % 10)


def _paired(cpu, n_s: int = 32, n_t: int = 16, batch: int = 8) -> PairedLoader:
    source = tlc.make_loader(_rgb_digits(n_s, 0), batch, cpu, shuffle=True)
    target = tlc.make_loader(_rgb_digits(n_t, 1, shift=0.3), batch, cpu, shuffle=True)
    return PairedLoader(source, target)


# ----------------------------------------------------------------- gradient reversal


@pytest.mark.parametrize("coeff", [0.0, 0.37, 1.0, 2.5])
def test_gradient_reversal_is_identity_forward_and_minus_lambda_backward(coeff):
    x = torch.randn(5, 7, requires_grad=True)
    incoming = torch.randn(5, 7)
    y = grad_reverse(x, coeff)
    assert torch.equal(y, x)
    y.backward(incoming)
    assert torch.equal(x.grad, -coeff * incoming)


def test_gradient_reversal_module_uses_its_coeff():
    layer = GradientReversal(0.5)
    x = torch.ones(3, requires_grad=True)
    (layer(x) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([-0.5, -1.0, -1.5]))


def test_dann_lambda_schedule():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(0.5) == pytest.approx(2 / (1 + np.exp(-5)) - 1)
    assert 0.999 < dann_lambda(1.0) < 1.0
    values = [dann_lambda(p / 10) for p in range(11)]
    assert values == sorted(values)
    with pytest.raises(ValueError, match="between 0 and 1"):
        dann_lambda(1.5)


# ----------------------------------------------------------------- CORAL


def _coral_numpy(f_s: np.ndarray, f_t: np.ndarray) -> float:
    d = f_s.shape[1]
    diff = np.cov(f_s, rowvar=False) - np.cov(f_t, rowvar=False)
    return float((diff**2).sum() / (4 * d * d))


def test_coral_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    f_s = rng.normal(size=(20, 6))
    f_t = rng.normal(loc=1.0, scale=2.0, size=(13, 6)) @ rng.normal(size=(6, 6))
    got = coral_loss(torch.tensor(f_s, dtype=torch.float32), torch.tensor(f_t, dtype=torch.float32))
    assert got.item() == pytest.approx(_coral_numpy(f_s, f_t), rel=1e-5)
    same = torch.tensor(f_s, dtype=torch.float32)
    assert coral_loss(same, same + 3.0).item() == pytest.approx(0.0, abs=1e-6)  # shift-blind


def test_coral_rejects_bad_inputs():
    with pytest.raises(ValueError, match="differ in size: 4 vs 5"):
        coral_loss(torch.randn(8, 4), torch.randn(8, 5))
    with pytest.raises(ValueError, match="2-D"):
        coral_loss(torch.randn(8, 4, 2), torch.randn(8, 4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        coral_loss(torch.randn(1, 4), torch.randn(8, 4))


def test_coral_step_runs_through_fit_and_reports_the_coral_term(cpu):
    model = tlc.models.DigitCNN(width=4, in_channels=3)
    history = tlc.fit(model, _paired(cpu), epochs=1, device=cpu, step=coral_step(2.0),
                      progress=False)
    assert history.last("train_coral") > 0
    total = history.last("train_cls_loss") + 2.0 * history.last("train_coral")
    assert history.last("train_loss") == pytest.approx(total, rel=1e-4)


# ----------------------------------------------------------------- AdaBN


def test_adabn_changes_only_batchnorm_statistics(cpu):
    torch.manual_seed(0)
    model = tlc.models.DigitCNN(width=4, in_channels=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    target = tlc.make_loader(_rgb_digits(24, 1, shift=0.4), 8, cpu)
    adapt_batchnorm(model, target, cpu)
    after = model.state_dict()
    stats = {k for k in before if k.rsplit(".", 1)[-1] in
             ("running_mean", "running_var", "num_batches_tracked")}
    for k in before:
        if k in stats:
            assert not torch.equal(before[k], after[k]), k
        else:
            assert torch.equal(before[k], after[k]), f"{k} must not change"
    assert not model.training and all(m.momentum == 0.1 for m in bn)  # restored


def test_adabn_statistics_are_the_target_mean(cpu):
    conv = nn.Conv2d(3, 2, 3)
    model = nn.Sequential(conv, nn.BatchNorm2d(2))
    target = _rgb_digits(30, 2)
    adapt_batchnorm(model, tlc.make_loader(target, 10, cpu), cpu)
    with torch.no_grad():
        expected = conv(target.tensors[0]).mean(dim=(0, 2, 3))
    assert torch.allclose(model[1].running_mean, expected, atol=1e-5)


def test_adabn_bad_inputs(cpu):
    with pytest.raises(ValueError, match="no BatchNorm"):
        adapt_batchnorm(nn.Linear(3, 2), [torch.randn(2, 3)], cpu)
    with pytest.raises(ValueError, match="empty"):
        adapt_batchnorm(nn.BatchNorm1d(3), [], cpu)
    with pytest.raises(TypeError, match="not an iterator"):
        adapt_batchnorm(nn.BatchNorm1d(3), iter([torch.randn(4, 3)]), cpu)


# ----------------------------------------------------------------- paired loader


def test_paired_loader_cycles_the_target(cpu):
    source = [(torch.full((2,), float(i)), torch.zeros(2)) for i in range(5)]
    target = [(torch.full((2,), 10.0 + i), torch.zeros(2)) for i in range(2)]
    pairs = list(PairedLoader(source, target))
    assert len(pairs) == len(PairedLoader(source, target)) == 5
    assert [int(t[0][0]) for _, t in pairs] == [10, 11, 10, 11, 10]
    assert [int(s[0][0]) for s, _ in pairs] == [0, 1, 2, 3, 4]


def test_paired_loader_rejects_an_empty_target(cpu):
    empty = tlc.make_loader(_rgb_digits(3, 0), 8, cpu, drop_last=True)
    with pytest.raises(ValueError, match="target loader is empty"):
        PairedLoader([1, 2], empty)

    def nothing():
        yield from ()

    class Endless:  # no len(): the error comes at iteration time
        def __iter__(self):
            return nothing()

    with pytest.raises(ValueError, match="no batches"):
        list(PairedLoader([(torch.zeros(1), torch.zeros(1))], Endless()))


# ----------------------------------------------------------------- baselines and DANN


def test_baseline_steps_read_the_right_domain(cpu):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.arange(10.0))  # always predicts class 9
    source = (torch.rand(4, 3, 28, 28), torch.zeros(4, dtype=torch.long))
    target = (torch.rand(4, 3, 28, 28), torch.full((4,), 9))
    ctx = StepContext(cpu, training=True)
    assert source_only_step(model, (source, target), ctx)["acc"] == 0
    assert oracle_step(model, (source, target), ctx)["acc"] == 1
    with pytest.raises(TypeError, match="PairedLoader"):
        source_only_step(model, source[0], ctx)


def test_discriminator_returns_logits_and_loss_checks_shapes():
    disc = DomainDiscriminator(8, hidden=16)
    f_s, f_t = torch.randn(4, 8) * 100, torch.randn(6, 8) * 100
    logits = disc(torch.cat([f_s, f_t]))
    assert logits.shape == (10,) and (logits.abs() > 1).any()  # not squashed into (0, 1)
    loss, acc = domain_adversarial_loss(f_s, f_t, disc, GradientReversal(1.0))
    assert torch.isfinite(loss) and 0 <= acc <= 1
    with pytest.raises(ValueError, match="differ in shape"):
        domain_adversarial_loss(f_s, torch.randn(6, 9), disc, GradientReversal(1.0))


def test_dann_step_runs_through_fit_and_trains_the_discriminator(cpu):
    torch.manual_seed(0)
    model = DANN(tlc.models.DigitCNN(width=4, in_channels=3), hidden=16)
    disc_before = [p.clone() for p in model.discriminator.parameters()]
    feat_before = [p.clone() for p in model.backbone.blocks.parameters()]
    history = tlc.fit(model, _paired(cpu), epochs=2, device=cpu, step=dann_step(1.0),
                      progress=False)
    moved = lambda before, now: any(not torch.equal(a, b)
                                    for a, b in zip(before, now, strict=True))
    assert moved(disc_before, model.discriminator.parameters())
    assert moved(feat_before, model.backbone.blocks.parameters())
    assert {"train_domain_loss", "train_domain_acc", "train_cls_loss"} <= set(history.metrics)
    # The last step of the last epoch used the scheduled lambda (progress 7/8 of the way).
    assert model.grl.coeff == pytest.approx(dann_lambda((1 + 3 / 4) / 2))
    assert model(torch.rand(2, 3, 28, 28)).shape == (2, 10)  # forward = class logits


def test_dann_step_needs_a_dann_model(cpu):
    step = dann_step()
    with pytest.raises(TypeError, match="DANN"):
        step(tlc.models.DigitCNN(width=4, in_channels=3), next(iter(_paired(cpu))),
             StepContext(cpu, training=True))


# ----------------------------------------------------------------- exercise checks


def test_exercise_checks_accept_solutions_and_never_raise(capsys):
    ex = tlc.exercises
    assert ex.check_reverse_grad(grad_reverse)
    assert ex.check_dann_schedule(dann_lambda)
    assert ex.check_coral_fn(coral_loss)
    assert ex.check_gap_closed(0.5, 0.2, 0.5, 0.8)
    assert not ex.check_reverse_grad(lambda x, lam: x)  # gradient not reversed
    assert not ex.check_dann_schedule(lambda p: p)
    assert not ex.check_coral_fn(lambda f_s, f_t: 1 / 0)  # learner bug -> feedback
    assert not ex.check_gap_closed(50, 0.2, 0.5, 0.8)
    assert not ex.check_coral_fn(...)
    out = capsys.readouterr().out
    assert "percentage" in out and "ZeroDivisionError" in out and "[todo]" in out


# ----------------------------------------------------------------- network and recipe


def test_ganin_cnn_standardises_each_image_and_gives_768_features():
    from tl_course.adapt import GaninCNN, Standardize

    x = torch.rand(4, 3, 28, 28) * 0.3 + 0.5
    z = Standardize()(x)
    assert torch.allclose(z.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(z.std(dim=(1, 2, 3)), torch.ones(4), atol=1e-3)
    model = GaninCNN(10).eval()
    assert model.features(x).shape == (4, 768) and model(x).shape == (4, 10)
    # Per-image standardisation: a brightness/contrast change of the input changes nothing.
    assert torch.allclose(model(x), model(2 * x + 0.1), atol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in GaninCNN(batchnorm=False).modules())


def test_discriminator_is_ganins_fc100_to_1_without_batchnorm():
    disc = DomainDiscriminator(768)
    assert [m.out_features for m in disc if isinstance(m, nn.Linear)] == [100, 1]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in disc.modules())


def test_recipe_anneals_the_learning_rate_like_ganin():
    from tl_course.adapt import Recipe

    recipe = Recipe()
    opt, sched = recipe.optimizer(recipe.model(), epochs=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(recipe.lr)
    assert lrs[5] == pytest.approx(recipe.lr / (1 + 10 * 0.5) ** 0.75)
    assert all(a > b for a, b in zip(lrs[:-1], lrs[1:], strict=True))
    assert recipe.epochs(tlc.get_profile("cpu")) > tlc.get_profile("cpu").epochs


def test_ganin_cnn_normalisations_and_batchnorm_everywhere():
    from tl_course.adapt import GaninCNN

    model = GaninCNN(10, batchnorm=True, normalize="batch")
    kinds = [type(m) for m in model.modules()]
    # Input BatchNorm (3 channels) + one per convolution, and one per hidden FC layer.
    assert kinds.count(nn.BatchNorm2d) == 3 and kinds.count(nn.BatchNorm1d) == 2
    assert model.blocks["input_bn"].num_features == 3
    assert "standardize" not in model.blocks
    plain = GaninCNN(10, batchnorm=False, normalize="none")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain.modules())
    with pytest.raises(ValueError, match="normalisation 'pixel'.*image, batch, none"):
        GaninCNN(10, normalize="pixel")


def test_each_method_has_its_own_recipe_and_baseline():
    from tl_course.adapt import BASELINES, LABELS, METHODS, recipe_for

    assert set(BASELINES) <= set(METHODS) and set(BASELINES.values()) <= set(METHODS)
    assert set(LABELS) == set(METHODS)
    for method, base in BASELINES.items():
        if method not in ("oracle", "dann_coral"):  # a baseline shares its method's recipe
            assert recipe_for(method) == recipe_for(base), method
    assert recipe_for("adabn").batchnorm and not recipe_for("source_only").batchnorm
    assert recipe_for("adabn").normalize == "batch"
    coral = recipe_for("coral")
    opt, sched = coral.optimizer(coral.model(), epochs=3)
    assert isinstance(opt, torch.optim.Adam) and sched is None and coral.coral_trade_off >= 100
    with pytest.raises(ValueError, match="unknown method 'mmd'"):
        recipe_for("mmd")
    with pytest.raises(ValueError, match="unknown optimizer"):
        tlc.adapt.Recipe(optimizer_name="rmsprop").optimizer(nn.Linear(2, 2), 1)


def test_run_method_rejects_an_unknown_method(cpu):
    with pytest.raises(ValueError, match="unknown method 'mmd'.*source_only"):
        tlc.adapt.run_method("mmd", None, tlc.get_profile("smoke"), cpu)


# ----------------------------------------------------------------- proxy A-distance


def test_proxy_a_distance_is_near_0_for_one_domain_and_2_for_separable_ones():
    from tl_course.adapt import proxy_a_distance

    rng = np.random.default_rng(0)
    f = rng.normal(size=(400, 8))
    # Two samples of the same distribution: a classifier cannot beat a coin.
    same = proxy_a_distance(f[:200], f[200:])
    assert abs(same) < 0.3
    # Identical sets: every point appears with both labels.
    assert abs(proxy_a_distance(f[:200], f[:200])) < 0.3
    # Far apart along one feature: never wrong.
    shifted = f[200:] + np.r_[20.0, np.zeros(7)]
    assert proxy_a_distance(f[:200], shifted) == pytest.approx(2.0)


def test_proxy_a_distance_is_2_times_1_minus_2_err():
    """Independent: one feature, source all at 0, target at 1 except 40 of 400 at 0.

    The points at 0 are mostly source (400 vs 40), so the best rule calls 0 "source" and
    errs exactly on the target's zeros: err = 40 / 800 = 0.05 in expectation over the
    held-out half, and the distance is 2 (1 - 2 x 0.05) = 1.8.
    """
    from tl_course.adapt import proxy_a_distance

    s = np.zeros((400, 1))
    t = np.ones((400, 1))
    t[:40] = 0.0
    pads = [proxy_a_distance(s, t, seed=k) for k in range(5)]
    assert 1.7 < np.mean(pads) < 1.9
    assert all(2 * (1 - 2 * 40 / 400) <= p <= 2.0 for p in pads)  # at worst all 40 held out


def test_proxy_a_distance_bad_inputs():
    from tl_course.adapt import proxy_a_distance

    with pytest.raises(ValueError, match="same d"):
        proxy_a_distance(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="at least 4"):
        proxy_a_distance(np.zeros((2, 3)), np.zeros((10, 3)))


# ----------------------------------------------------------------- DANN + CORAL


def test_dann_coral_loss_matches_a_hand_computation(cpu):
    """CE + w_d * BCE(domain) + w_c * CORAL, each term computed here independently."""
    from tl_course.adapt import GaninCNN, dann_coral_step

    torch.manual_seed(0)
    model = DANN(GaninCNN(10, batchnorm=False))
    x_s, x_t = torch.rand(6, 3, 28, 28), torch.rand(5, 3, 28, 28) * 0.5
    y_s = torch.arange(6) % 10
    ctx = StepContext(cpu, True, epoch=1, epochs=4)  # progress 0.25
    out = dann_coral_step(trade_off=0.7, coral_trade_off=3000.0)(model, ((x_s, y_s), x_t), ctx)
    with torch.no_grad():
        f_s, f_t = model.features(x_s).numpy(), model.features(x_t).numpy()
        z = model.head(torch.from_numpy(f_s)).numpy()
        d = model.discriminator(torch.from_numpy(np.concatenate([f_s, f_t]))).numpy()
    ce = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(6), y_s.numpy()])
    labels = np.r_[np.ones(6), np.zeros(5)]
    p = 1 / (1 + np.exp(-d))
    bce = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    dim = f_s.shape[1]
    coral = ((np.cov(f_s, rowvar=False) - np.cov(f_t, rowvar=False)) ** 2).sum() / (4 * dim**2)
    assert out["loss"].item() == pytest.approx(ce + 0.7 * bce + 3000.0 * coral, rel=1e-4)
    assert out["coral"].item() == pytest.approx(coral, rel=1e-4)
    assert model.grl.coeff == pytest.approx(dann_lambda(0.25))


def test_dann_coral_term_reaches_the_features_of_both_domains(cpu):
    """The CORAL term must move the feature extractor through source *and* target."""
    from tl_course.adapt import GaninCNN, dann_coral_step

    torch.manual_seed(0)
    model = DANN(GaninCNN(10, batchnorm=False))
    x_s, x_t = torch.rand(6, 3, 28, 28), torch.rand(5, 3, 28, 28)
    x_t.requires_grad_(True)
    ctx = StepContext(cpu, True, epoch=0, epochs=1)
    # Domain weight 0 and an untrained discriminator aside, only CORAL and CE remain; CE
    # never sees the target, so a gradient on x_t can only come from the CORAL term.
    out = dann_coral_step(trade_off=0.0, coral_trade_off=3000.0)(
        model, ((x_s, torch.arange(6)), x_t), ctx)
    out["loss"].backward()
    assert x_t.grad is not None and x_t.grad.abs().sum() > 0
    with pytest.raises(TypeError, match="DANN model"):
        dann_coral_step()(GaninCNN(10), ((x_s, torch.arange(6)), x_t), ctx)


# ----------------------------------------------------------------- defects (issue 17, part 3)


def test_an_inplace_op_after_the_reversal_layer_works():
    """A discriminator may start with an in-place ReLU: the layer must return a new tensor."""
    x = torch.randn(6, 5, requires_grad=True)
    kept = x.detach().clone()
    y = nn.functional.relu(grad_reverse(x, 0.5), inplace=True)
    y.sum().backward()
    assert torch.equal(x.detach(), kept)  # the input is not modified in place
    assert torch.equal(x.grad, -0.5 * (kept > 0).float())
    disc = nn.Sequential(GradientReversal(2.0), nn.ReLU(inplace=True), nn.Linear(5, 1))
    z = torch.randn(6, 5, requires_grad=True)
    disc(z).sum().backward()
    expected = -2.0 * (z.detach() > 0).float() * disc[2].weight.detach()
    assert torch.allclose(z.grad, expected)


def _bn_net() -> nn.Sequential:
    """conv-BN-ReLU twice, then a BatchNorm1d on a linear layer: three layers to adapt."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3),
        nn.BatchNorm2d(5), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(20, 6), nn.BatchNorm1d(6))


def _class_shifted_target(n_per_class: int = 12, classes: int = 4) -> TensorDataset:
    """Images whose brightness depends on the class: a class-sorted loader's batches differ."""
    gen = torch.Generator().manual_seed(3)
    y = torch.arange(classes).repeat_interleave(n_per_class)  # sorted by class
    x = torch.rand(len(y), 3, 10, 10, generator=gen) * 0.5 + y.view(-1, 1, 1, 1) * 0.7
    return TensorDataset(x, y)


def _exact_target_stats(model: nn.Sequential, x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Li et al.'s AdaBN, written out: each BatchNorm layer's input mean and unbiased
    variance over the whole target set, with every earlier layer already normalised by
    the target's own statistics (float64, one full-batch pass per layer)."""
    stats = []
    h = x.double()
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                dims = [0] + list(range(2, h.dim()))
                mean, var = h.mean(dim=dims), h.var(dim=dims, unbiased=True)
                stats.append((mean, var))
                shape = [1, -1] + [1] * (h.dim() - 2)
                h = (h - mean.view(shape)) / torch.sqrt(var.view(shape) + m.eps)
                h = h * m.weight.double().view(shape) + m.bias.double().view(shape)
            else:
                h = m.double()(h)
                m.float()
    return stats


def _source_trained(model: nn.Module) -> nn.Module:
    """Give every BatchNorm layer source statistics far from the target's."""
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(16, 3, 10, 10) * 3 - 2)
    return model.eval()


def test_adabn_statistics_are_exact_target_statistics_layer_by_layer(cpu):
    model = _source_trained(_bn_net())
    target = _class_shifted_target()
    adapt_batchnorm(model, tlc.make_loader(target, 8, cpu), cpu)
    expected = _exact_target_stats(model, target.tensors[0])
    layers = [m for m in model if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(layers) == len(expected) == 3
    for m, (mean, var) in zip(layers, expected, strict=True):
        assert torch.allclose(m.running_mean.double(), mean, atol=1e-5, rtol=1e-5)
        assert torch.allclose(m.running_var.double(), var, atol=1e-5, rtol=1e-5)


def test_adabn_does_not_depend_on_the_order_of_the_target_loader(cpu):
    target = _class_shifted_target()
    by_class = adapt_batchnorm(_source_trained(_bn_net()),
                               tlc.make_loader(target, 12, cpu, shuffle=False), cpu)
    shuffled = adapt_batchnorm(_source_trained(_bn_net()),
                               tlc.make_loader(target, 12, cpu, shuffle=True, seed=5), cpu)
    one_batch = adapt_batchnorm(_source_trained(_bn_net()),
                                tlc.make_loader(target, len(target), cpu), cpu)
    for a, b, c in zip(by_class.buffers(), shuffled.buffers(), one_batch.buffers(), strict=True):
        if a.is_floating_point():
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
            assert torch.allclose(a, c, atol=1e-6, rtol=1e-5)


def test_adabn_gives_back_momentum_and_each_modules_mode(cpu):
    model = _source_trained(_bn_net())
    model[1].momentum, model[4].momentum = None, 0.3
    model.train()
    model[4].eval()  # a frozen BatchNorm inside a training model
    modes = [m.training for m in model.modules()]
    adapt_batchnorm(model, tlc.make_loader(_class_shifted_target(), 8, cpu), cpu)
    assert [m.training for m in model.modules()] == modes
    assert (model[1].momentum, model[4].momentum, model[9].momentum) == (None, 0.3, 0.1)


# ----------------------------------------------------------------- defining properties (issue 17)


def _dann_batch(n_s: int = 6, n_t: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x_s = torch.rand(n_s, 3, 28, 28, generator=gen)
    x_t = torch.rand(n_t, 3, 28, 28, generator=gen) * 0.5 + 0.3
    return (x_s, torch.arange(n_s) % 10), x_t


def _ganin_dann(seed: int = 0) -> DANN:
    from tl_course.adapt import GaninCNN

    torch.manual_seed(seed)
    return DANN(GaninCNN(10, batchnorm=False), hidden=16)


def _grads(loss: torch.Tensor, params) -> list[torch.Tensor]:
    params = list(params)
    return [g if g is not None else torch.zeros_like(p)
            for g, p in zip(torch.autograd.grad(loss, params, allow_unused=True,
                                                retain_graph=True), params,
                            strict=True)]


def _bce_domain(logits: torch.Tensor, n_s: int) -> torch.Tensor:
    """Ganin's domain loss written out: source = 1, target = 0, mean binary cross-entropy."""
    labels = torch.cat([torch.ones(n_s), torch.zeros(len(logits) - n_s)])
    p = torch.sigmoid(logits)
    return -(labels * torch.log(p) + (1 - labels) * torch.log(1 - p)).mean()


@pytest.mark.parametrize("coeff", [0.3, 1.0])
def test_the_features_receive_minus_lambda_times_the_domain_gradient(coeff):
    """Through the layer, the domain loss's gradient on the features is exactly -lambda
    times its gradient without the layer; the discriminator's own gradient is unchanged."""
    torch.manual_seed(0)
    f_s, f_t = torch.randn(4, 8, requires_grad=True), torch.randn(3, 8, requires_grad=True)
    disc = DomainDiscriminator(8, hidden=5)
    loss, _ = domain_adversarial_loss(f_s, f_t, disc, GradientReversal(coeff))
    got = _grads(loss, [f_s, f_t, *disc.parameters()])
    plain = _bce_domain(disc(torch.cat([f_s, f_t])), 4)  # no reversal, written out
    want = _grads(plain, [f_s, f_t, *disc.parameters()])
    assert torch.allclose(loss, plain, atol=1e-6)
    assert torch.allclose(got[0], -coeff * want[0], atol=1e-7)
    assert torch.allclose(got[1], -coeff * want[1], atol=1e-7)
    for g, w in zip(got[2:], want[2:], strict=True):  # the discriminator learns normally
        assert torch.allclose(g, w, atol=1e-7)


def test_dann_lambda_equals_the_formula_at_0_half_and_1():
    formula = lambda p, gamma=10.0, high=1.0: high * (2 / (1 + math.exp(-gamma * p)) - 1)
    for p in (0.0, 0.5, 1.0):
        assert dann_lambda(p) == pytest.approx(formula(p), abs=1e-12)
    assert dann_lambda(0.3, gamma=4.0, high=0.5) == pytest.approx(formula(0.3, 4.0, 0.5))
    assert dann_lambda(1.0) == pytest.approx(0.9999092042625951, abs=1e-12)


def test_dann_step_uses_the_scheduled_lambda_and_a_constant_one_without_schedule(cpu):
    batch = _dann_batch()
    model = _ganin_dann()
    dann_step(1.0)(model, batch, StepContext(cpu, True, epoch=1, batch=1, batches=2, epochs=4))
    assert model.grl.coeff == pytest.approx(dann_lambda(1.5 / 4))
    dann_step(1.0, schedule=False)(model, batch, StepContext(cpu, True, epoch=0, epochs=4))
    assert model.grl.coeff == 1.0


@pytest.mark.parametrize("trade_off", [0.25, 3.0])
def test_dann_trade_off_scales_the_domain_gradient_on_the_features(cpu, trade_off):
    """grad(loss) = grad(CE) - trade_off * lambda * grad(domain loss) on the features, the
    domain loss written out here (source = 1, target = 0) without any reversal."""
    batch = _dann_batch()
    (x_s, y_s), x_t = batch
    ctx = StepContext(cpu, True, epoch=1, epochs=2)  # progress 0.5
    lam = dann_lambda(0.5)
    model = _ganin_dann()
    feats = list(model.backbone.blocks.parameters())
    got = _grads(dann_step(trade_off)(model, batch, ctx)["loss"], feats)
    f = model.features(torch.cat([x_s, x_t]))
    ce = nn.functional.cross_entropy(model.head(f[:6]), y_s)
    domain = _bce_domain(model.discriminator(f), 6)
    g_ce, g_dom = _grads(ce, feats), _grads(domain, feats)
    for g, c, d in zip(got, g_ce, g_dom, strict=True):
        assert torch.allclose(g, c - trade_off * lam * d, atol=1e-6, rtol=1e-4)
    assert sum(float(d.abs().sum()) for d in g_dom) > 0  # the check is not vacuous


def test_a_dann_sgd_step_moves_the_features_to_raise_the_domain_loss(cpu):
    """Plain SGD, discriminator frozen for the check: the update with the domain term minus
    the update without it has a positive inner product with grad(domain loss)."""
    import copy

    batch = _dann_batch()
    ctx = StepContext(cpu, True, epoch=1, epochs=2)
    start = _ganin_dann()
    start.discriminator.requires_grad_(False)

    def updated(trade_off: float) -> list[torch.Tensor]:
        model = copy.deepcopy(start)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        opt.zero_grad()
        dann_step(trade_off)(model, batch, ctx)["loss"].backward()
        opt.step()
        return [p.detach().clone() for p in model.backbone.blocks.parameters()]

    with_domain, without = updated(1.0), updated(0.0)
    (x_s, _), x_t = batch
    feats = list(start.backbone.blocks.parameters())
    domain = _bce_domain(start.discriminator(start.features(torch.cat([x_s, x_t]))), 6)
    g_dom = _grads(domain, feats)
    inner = sum(float(((a - b) * g).sum())
                for a, b, g in zip(with_domain, without, g_dom, strict=True))
    assert inner > 0
    # Exactly: delta = +lr * lambda * grad(domain loss).
    for a, b, g in zip(with_domain, without, g_dom, strict=True):
        assert torch.allclose(a - b, 0.1 * dann_lambda(0.5) * g, atol=1e-6)


def test_the_discriminator_labels_source_1_and_target_0():
    disc = nn.Linear(2, 1)
    with torch.no_grad():
        disc.weight.copy_(torch.tensor([[2.0, 0.0]]))
        disc.bias.zero_()
    wrapped = lambda f: disc(f).squeeze(1)
    f_s = torch.tensor([[1.0, 0.0], [2.0, 1.0]])  # logits +2, +4: "source"
    f_t = torch.tensor([[-1.0, 0.0], [-3.0, 2.0], [0.5, 0.0]])  # -2, -6, +1
    loss, acc = domain_adversarial_loss(f_s, f_t, wrapped, GradientReversal(1.0))
    assert acc.item() == pytest.approx(4 / 5)
    assert loss.item() == pytest.approx(
        _bce_domain(torch.tensor([2.0, 4.0, -2.0, -6.0, 1.0]), 2).item(), rel=1e-6)


def test_coral_by_hand_on_a_two_by_two_example():
    """Sources along x, targets along y: C_s = diag(2, 0), C_t = diag(0, 2) (n - 1 = 1),
    ||C_s - C_t||_F^2 = 8, d = 2: 8 / (4 * 4) = 0.5."""
    f_s = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    f_t = torch.tensor([[5.0, 1.0], [5.0, -1.0]])  # shifted: CORAL ignores the means
    assert coral_loss(f_s, f_t).item() == pytest.approx(0.5, abs=1e-7)
    assert coral_loss(f_s * 2, f_s).item() == pytest.approx((6**2) / 16, abs=1e-6)


def _coral_by_hand(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    def cov(f):
        c = f - f.mean(0)
        return c.T @ c / (len(f) - 1)

    d = f_s.shape[1]
    return ((cov(f_s) - cov(f_t)) ** 2).sum() / (4 * d * d)


@pytest.mark.parametrize("trade_off", [0.5, 40.0])
def test_coral_step_is_ce_plus_trade_off_coral_on_the_features_in_value_and_gradient(
        cpu, trade_off, monkeypatch):
    import tl_course.adapt.coral as coral_module

    torch.manual_seed(0)
    model = tlc.models.DigitCNN(width=4, in_channels=3).train()
    (x_s, y_s), x_t = _dann_batch()
    seen = []
    real = coral_module.coral_loss
    monkeypatch.setattr(coral_module, "coral_loss",
                        lambda a, b: seen.append((a.shape, b.shape)) or real(a, b))
    out = coral_step(trade_off)(model, ((x_s, y_s), x_t), StepContext(cpu, True))
    # The layer the course documents: the features, (n, feature_dim) for each domain.
    assert seen == [((6, model.feature_dim), (5, model.feature_dim))]
    params = [p for p in model.parameters()]
    got = _grads(out["loss"], params)
    f = model.features(torch.cat([x_s, x_t]))  # one pass: BatchNorm sees both domains
    ce = nn.functional.cross_entropy(model.head(f[:6]), y_s)
    coral = _coral_by_hand(f[:6], f[6:])
    assert out["coral"].item() == pytest.approx(coral.item(), rel=1e-4)
    assert out["loss"].item() == pytest.approx((ce + trade_off * coral).item(), rel=1e-5)
    want = _grads(ce + trade_off * coral, params)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-6, rtol=1e-4)
    # The CORAL term reaches the feature extractor (not only a detached copy of it).
    g_coral = _grads(coral, list(model.blocks.parameters()))
    assert sum(float(g.abs().sum()) for g in g_coral) > 0


def test_adabn_resets_a_batchnorm_layer_the_forward_pass_never_reaches(cpu):
    class WithSpare(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.unused = _source_trained(_bn_net()), nn.BatchNorm1d(3)

        def forward(self, x):
            return self.net(x)

    model = WithSpare()
    model.unused.running_mean.fill_(7.0)
    model.unused.running_var.fill_(9.0)
    adapt_batchnorm(model, tlc.make_loader(_class_shifted_target(), 8, cpu), cpu)
    assert torch.equal(model.unused.running_mean, torch.zeros(3))
    assert torch.equal(model.unused.running_var, torch.ones(3))


def test_adabn_on_the_course_network_equals_exact_statistics(cpu):
    """GaninCNN with input BatchNorm, conv and FC BatchNorm layers, as notebook 04 runs it."""
    from tl_course.adapt import GaninCNN

    torch.manual_seed(0)
    model = _source_trained_ganin(GaninCNN(10, batchnorm=True, normalize="batch"))
    target = _rgb_digits(40, 4, shift=0.3)
    adapt_batchnorm(model, tlc.make_loader(target, 16, cpu), cpu)
    x = target.tensors[0].double()
    m = model.double()
    layers = []
    with torch.no_grad():
        def bn(layer, h):
            dims = [0] + list(range(2, h.dim()))
            mean, var = h.mean(dim=dims), h.var(dim=dims, unbiased=True)
            layers.append((layer, mean, var))
            shape = [1, -1] + [1] * (h.dim() - 2)
            return ((h - mean.view(shape)) / torch.sqrt(var.view(shape) + layer.eps)
                    * layer.weight.view(shape) + layer.bias.view(shape))

        h = bn(m.blocks["input_bn"], x)
        for name in ("block1", "block2"):
            conv, norm, relu, pool = m.blocks[name]
            h = pool(relu(bn(norm, conv(h))))
        h = m.pool(h)
        lin1, bn1, relu1, lin2, bn2, relu2, _ = m.head
        h = relu1(bn(bn1, lin1(h)))
        relu2(bn(bn2, lin2(h)))
    assert len(layers) == 5
    for layer, mean, var in layers:
        assert torch.allclose(layer.running_mean, mean, atol=1e-5, rtol=1e-5)
        assert torch.allclose(layer.running_var, var, atol=1e-5, rtol=1e-5)


def _source_trained_ganin(model: nn.Module) -> nn.Module:
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 3, 28, 28) * 0.2)
    return model.eval()


def test_domain_features_are_taken_in_eval_mode_and_the_mode_comes_back(cpu):
    from tl_course.adapt import domain_features

    torch.manual_seed(0)
    model = tlc.models.DigitCNN(width=4, in_channels=3, dropout=0.5).train()
    x = torch.rand(10, 3, 28, 28)
    before = [b.clone() for b in model.buffers()]
    got = domain_features(model, x, cpu, batch_size=4)
    assert model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))
    with torch.no_grad():
        want = model.eval().features(x)
    assert torch.allclose(got, want, atol=1e-6)


def test_dann_coral_step_weights_each_term_in_the_gradient(cpu):
    """d loss / d features = grad CE - w_d * lambda * grad domain + w_c * grad CORAL."""
    from tl_course.adapt import dann_coral_step

    batch = _dann_batch()
    (x_s, y_s), x_t = batch
    ctx = StepContext(cpu, True, epoch=1, epochs=2)
    model = _ganin_dann()
    feats = list(model.backbone.blocks.parameters())
    got = _grads(dann_coral_step(0.7, 50.0)(model, batch, ctx)["loss"], feats)
    f = model.features(torch.cat([x_s, x_t]))
    ce = nn.functional.cross_entropy(model.head(f[:6]), y_s)
    parts = [_grads(t, feats) for t in (ce, _bce_domain(model.discriminator(f), 6),
                                         _coral_by_hand(f[:6], f[6:]))]
    lam = dann_lambda(0.5)
    for g, c, d, k in zip(got, *parts, strict=True):
        assert torch.allclose(g, c - 0.7 * lam * d + 50.0 * k, atol=1e-6, rtol=1e-4)


# ----------------------------------------------------------------- recipes: run_method end to end


@pytest.fixture(scope="module")
def tiny_pair():
    from tl_course.data import DigitsData
    from tl_course.domains import DomainPair

    def digits(n, seed, shift):
        gen = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % 10
        x = torch.rand(n, 3, 28, 28, generator=gen) * 0.3 + shift
        x[torch.arange(n), :, 2 * y + 4, 4:24] += 0.6  # a class-specific bright row
        return TensorDataset(x.clamp(0, 1), y)

    return DomainPair(DigitsData("src", digits(48, 0, 0.0), digits(20, 1, 0.0), "made up"),
                      DigitsData("tgt", digits(40, 2, 0.3), digits(20, 3, 0.3), "made up"))


def _tiny_recipe(method: str):
    import dataclasses

    from tl_course.adapt import recipe_for

    return dataclasses.replace(recipe_for(method), batch_size=16, disc_hidden=8)


def _run(method, pair, cpu, **kw):
    from tl_course.adapt import run_method

    kw.setdefault("recipe", _tiny_recipe(method))
    return run_method(method, pair, tlc.get_profile("smoke"), cpu, epochs=1, **kw)


@pytest.mark.parametrize("method, keys", [
    ("source_only", set()), ("oracle", set()), ("coral", {"train_coral"}),
    ("dann", {"train_domain_loss"}), ("dann_coral", {"train_coral", "train_domain_loss"}),
])
def test_run_method_trains_each_method_with_its_own_step(tiny_pair, cpu, method, keys):
    from tl_course.adapt import GaninCNN

    result = _run(method, tiny_pair, cpu)
    assert result.method == method and result.recipe == _tiny_recipe(method)
    assert result.history.epochs == 1
    adaptation = {"train_coral", "train_domain_loss"}
    assert adaptation & set(result.history.metrics) == keys
    assert isinstance(result.model, DANN) == method.startswith("dann")
    backbone = result.model.backbone if method.startswith("dann") else result.model
    assert isinstance(backbone, GaninCNN)
    target_test = tlc.make_loader(tiny_pair.target.test, 7, cpu)
    source_test = tlc.make_loader(tiny_pair.source.test, 7, cpu)
    assert result.target_acc == pytest.approx(tlc.accuracy(result.model, target_test, cpu))
    assert result.source_acc == pytest.approx(tlc.accuracy(result.model, source_test, cpu))


def test_run_method_trade_off_replaces_the_methods_main_weight(tiny_pair, cpu):
    for method, term in (("coral", "train_coral"), ("dann", "train_domain_loss")):
        off = _run(method, tiny_pair, cpu, trade_off=0.0).history
        assert off["train_loss"][0] == pytest.approx(off["train_cls_loss"][0], rel=1e-5)
        on = _run(method, tiny_pair, cpu, trade_off=2.0).history
        assert on["train_loss"][0] == pytest.approx(
            on["train_cls_loss"][0] + 2.0 * on[term][0], rel=1e-4)
        assert on["train_loss"][0] != pytest.approx(on["train_cls_loss"][0], rel=1e-5)


def test_run_method_is_seeded(tiny_pair, cpu):
    a = _run("source_only", tiny_pair, cpu, seed=3).model.state_dict()
    b = _run("source_only", tiny_pair, cpu, seed=3).model.state_dict()
    c = _run("source_only", tiny_pair, cpu, seed=4).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_run_method_adabn_adapts_a_copy_of_the_batchnorm_source_model(tiny_pair, cpu):
    from tl_course.adapt import batchnorm_layers

    base = _run("bn_source_only", tiny_pair, cpu)
    assert batchnorm_layers(base.model)
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    result = _run("adabn", tiny_pair, cpu, source_only=base.model)
    assert result.history is None
    assert all(torch.equal(before[k], v) for k, v in base.model.state_dict().items())
    import copy

    want = adapt_batchnorm(copy.deepcopy(base.model),
                           tlc.make_loader(tiny_pair.target.train, 13, cpu), cpu)
    got = result.model.state_dict()
    for k, v in want.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(got[k], v, atol=1e-5), k
    trained_here = _run("adabn", tiny_pair, cpu)  # no source model given: trains one first
    assert batchnorm_layers(trained_here.model)


def test_recipe_loaders_pair_shuffled_full_batches_and_keep_the_test_set_whole(tiny_pair, cpu):
    recipe = _tiny_recipe("dann")
    paired_loader, target_test = recipe.loaders(tiny_pair, cpu, seed=0)
    pairs = list(paired_loader)
    assert len(pairs) == len(paired_loader) == 48 // 16
    for (x_s, y_s), (x_t, _) in pairs:
        assert x_s.shape[0] == x_t.shape[0] == 16 and y_s.shape == (16,)
    labels = torch.cat([y for (_, y), _ in pairs])
    assert labels.tolist() != tiny_pair.source.train.tensors[1][:48].tolist()  # shuffled
    again = [y for (_, y), _ in recipe.loaders(tiny_pair, cpu, seed=0)[0]]
    assert torch.equal(torch.cat(again), labels)
    assert torch.equal(torch.cat([y for _, y in target_test]), tiny_pair.target.test.tensors[1])


def test_method_result_proxy_a_distance_reads_both_domains_test_features(tiny_pair, cpu):
    from tl_course.adapt import domain_features, proxy_a_distance

    result = _run("source_only", tiny_pair, cpu)
    f_s = domain_features(result.model, tiny_pair.source.test.tensors[0], cpu)
    f_t = domain_features(result.model, tiny_pair.target.test.tensors[0], cpu)
    assert result.proxy_a_distance(tiny_pair, cpu, seed=2) == pytest.approx(
        proxy_a_distance(f_s, f_t, seed=2))


# ----------------------------------------------------------------- AdaBN and step details


def test_adabn_on_a_batchnorm_layer_used_twice_pools_both_inputs(cpu):
    """One BatchNorm module applied to two inputs per forward (shared weights): its
    statistics are those of everything it normalises, both calls together."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.bn = nn.Linear(4, 3), nn.Linear(4, 3), nn.BatchNorm1d(3)
            self.after = nn.BatchNorm1d(3)

        def forward(self, x):
            return self.after(self.bn(self.a(x)) + self.bn(self.b(x)))

    torch.manual_seed(0)
    model = Shared()
    x = torch.randn(12, 4) * 2 + 1
    adapt_batchnorm(model, [x[:5], x[5:]], cpu)  # plain tensors, two batches
    with torch.no_grad():
        both = torch.cat([model.a(x), model.b(x)]).double()
        mean, var = both.mean(0), both.var(0, unbiased=True)
        h = sum((f(x).double() - mean) / torch.sqrt(var + 1e-5) * model.bn.weight.double()
                + model.bn.bias.double() for f in (model.a, model.b))
    assert torch.allclose(model.bn.running_mean.double(), mean, atol=1e-5)
    assert torch.allclose(model.bn.running_var.double(), var, atol=1e-5)
    assert torch.allclose(model.after.running_mean.double(), h.mean(0), atol=1e-5)
    assert torch.allclose(model.after.running_var.double(), h.var(0, unbiased=True), atol=1e-5)
    assert int(model.bn.num_batches_tracked) == 2  # the number of target batches


def test_adabn_reads_plain_tensor_batches_like_image_label_pairs(cpu):
    target = _class_shifted_target()
    x = target.tensors[0]
    pairs = adapt_batchnorm(_source_trained(_bn_net()), [(x[:20], 0), (x[20:], 0)], cpu)
    plain = adapt_batchnorm(_source_trained(_bn_net()), [x[:20], x[20:]], cpu)
    for a, b in zip(pairs.buffers(), plain.buffers(), strict=True):
        assert torch.equal(a, b)


def test_adabn_stops_each_pass_at_the_layer_it_measures(cpu):
    """One pass per BatchNorm layer, each ending at that layer: a module after the last
    BatchNorm runs only in the first pass, which finds the order of the layers."""
    calls = []

    class Count(nn.Module):
        def forward(self, x):
            calls.append(len(x))
            return x

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 4),
                          nn.BatchNorm1d(4), Count())
    adapt_batchnorm(model, [torch.randn(6, 3), torch.randn(6, 3), torch.randn(6, 3)], cpu)
    assert calls == [6]


def test_adabn_needs_two_values_per_channel(cpu):
    model = adapt_batchnorm(nn.BatchNorm1d(2), [torch.tensor([[1.0, 2.0], [3.0, 6.0]])], cpu)
    assert torch.allclose(model.running_var, torch.tensor([2.0, 8.0]))
    with pytest.raises(ValueError, match="at least 2 values"):
        adapt_batchnorm(nn.BatchNorm1d(2), [torch.tensor([[1.0, 2.0]])], cpu)


def test_steps_cap_the_schedule_at_the_end_of_training(cpu):
    """Past the last epoch (progress > 1) the reversal strength stays at lambda(1)."""
    from tl_course.adapt import dann_coral_step

    ctx = StepContext(cpu, True, epoch=4, epochs=4, batch=1, batches=2)
    assert ctx.progress > 1
    for step in (dann_step(), dann_coral_step()):
        model = _ganin_dann()
        step(model, _dann_batch(), ctx)
        assert model.grl.coeff == pytest.approx(dann_lambda(1.0))


def test_dann_coral_step_defaults_and_its_own_name_in_errors(cpu):
    from tl_course.adapt import GaninCNN, dann_coral_step

    batch, ctx = _dann_batch(), StepContext(cpu, True, epoch=1, epochs=2)
    default = dann_coral_step()(_ganin_dann(), batch, ctx)["loss"]
    explicit = dann_coral_step(1.0, 3000.0)(_ganin_dann(), batch, ctx)["loss"]
    assert default.item() == pytest.approx(explicit.item(), rel=1e-6)
    with pytest.raises(TypeError, match="dann_coral_step trains a tlc.adapt.DANN model"):
        dann_coral_step()(GaninCNN(10), batch, ctx)


def test_paired_is_the_paired_loader():
    from tl_course.adapt import paired

    source = [(torch.full((2,), float(i)), torch.zeros(2)) for i in range(3)]
    target = [torch.full((2,), 10.0)]
    assert [(s[0][0].item(), t[0].item()) for s, t in paired(source, target)] == [
        (0.0, 10.0), (1.0, 10.0), (2.0, 10.0)]



def test_dann_model_and_discriminator_settings():
    from tl_course.adapt import GaninCNN

    disc = DomainDiscriminator(12)
    assert [type(m) for m in disc] == [nn.Linear, nn.ReLU, nn.Linear]
    model = DANN(GaninCNN(10, batchnorm=False))
    assert model.discriminator[0].out_features == 100 and model.grl.coeff == 0.0
    assert DANN(GaninCNN(10, batchnorm=False), hidden=16).discriminator[0].out_features == 16
    assert GradientReversal().coeff == 1.0


def test_domain_accuracy_counts_a_zero_logit_as_target():
    disc = lambda f: torch.zeros(len(f))  # undecided about everything
    _, acc = domain_adversarial_loss(torch.randn(2, 3), torch.randn(5, 3), disc,
                                     GradientReversal(1.0))
    assert acc.item() == pytest.approx(5 / 7)


def test_dann_step_reports_source_accuracy_and_size_with_default_weight(cpu):
    from tl_course.adapt import GaninCNN

    batch, ctx = _dann_batch(), StepContext(cpu, True, epoch=1, epochs=2)
    model = _ganin_dann()
    out = dann_step()(model, batch, ctx)
    (x_s, y_s), _ = batch
    with torch.no_grad():
        want = (model(x_s).argmax(1) == y_s).float().mean()
    assert out["acc"].item() == pytest.approx(want.item()) and out["n"] == 6
    explicit = dann_step(1.0)(_ganin_dann(), batch, ctx)["loss"]
    assert out["loss"].item() == pytest.approx(explicit.item(), rel=1e-6)
    with pytest.raises(TypeError, match="dann_step trains a tlc.adapt.DANN model"):
        dann_step()(GaninCNN(10), batch, ctx)
    source = (torch.rand(4, 3, 28, 28), torch.zeros(4, dtype=torch.long))
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 10))
    assert source_only_step(plain, (source, source), ctx)["n"] == 4


def test_run_method_wires_each_method_to_its_step_optimizer_and_epochs(tiny_pair, cpu,
                                                                        monkeypatch):
    import tl_course.adapt.recipes as recipes
    from tl_course.adapt import METHODS

    calls = []
    real_fit = recipes.fit

    def spy(model, loader, **kw):
        calls.append(kw)
        return real_fit(model, loader, **kw)

    monkeypatch.setattr(recipes, "fit", spy)
    profile = tlc.get_profile("smoke")
    for method in METHODS:
        calls.clear()
        recipe = _tiny_recipe(method)
        result = recipes.run_method(method, tiny_pair, profile, cpu, recipe=recipe)
        kw = calls[-1]
        assert kw["epochs"] == recipe.epochs(profile), method
        assert kw["optimizer"] is not None and kw["progress"] is False
        assert kw["desc"] == ("bn_source_only" if method == "adabn" else method)
        assert (kw["scheduler"] is None) == (recipe.optimizer_name == "adam")
        if method == "oracle":
            assert kw["step"] is recipes.oracle_step
        elif method in ("source_only", "bn_source_only", "coral_source_only", "adabn"):
            assert kw["step"] is recipes.source_only_step
        if method.startswith("dann"):
            assert result.model.discriminator[0].out_features == recipe.disc_hidden


def test_run_method_dann_coral_uses_both_weights_and_seed_0_by_default(tiny_pair, cpu):
    recipe = _tiny_recipe("dann_coral")
    h = _run("dann_coral", tiny_pair, cpu, recipe=recipe).history
    want = (h["train_cls_loss"][0] + recipe.dann_trade_off * h["train_domain_loss"][0]
            + recipe.coral_trade_off * h["train_coral"][0])
    assert h["train_loss"][0] == pytest.approx(want, rel=1e-4)
    a = _run("source_only", tiny_pair, cpu).model.state_dict()
    b = _run("source_only", tiny_pair, cpu, seed=0).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_recipe_loaders_drop_the_last_partial_batch_and_shuffle_the_target(tiny_pair, cpu):
    import dataclasses

    recipe = dataclasses.replace(_tiny_recipe("dann"), batch_size=15)  # 48 = 3 x 15 + 3
    paired_loader, _ = recipe.loaders(tiny_pair, cpu)
    pairs = list(paired_loader)
    assert len(pairs) == 3 and all(len(s[1]) == len(t[0]) == 15 for s, t in pairs)
    targets = torch.cat([t[1] for _, t in pairs])
    assert targets.tolist() != tiny_pair.target.train.tensors[1][:45].tolist()
    again = torch.cat([t[1] for _, t in recipe.loaders(tiny_pair, cpu, seed=0)[0]])
    assert torch.equal(targets, again)
    other = torch.cat([t[1] for _, t in recipe.loaders(tiny_pair, cpu, seed=1)[0]])
    assert not torch.equal(targets, other)


def test_coral_step_reports_accuracy_and_size_with_weight_1_by_default(cpu):
    torch.manual_seed(0)
    model = tlc.models.DigitCNN(width=4, in_channels=3).eval()
    batch = _dann_batch()
    (x_s, y_s), _ = batch
    out = coral_step()(model, batch, StepContext(cpu, True))
    with torch.no_grad():
        want = (model(x_s).argmax(1) == y_s).float().mean()
    assert out["acc"].item() == pytest.approx(want.item()) and out["n"] == 6
    assert out["loss"].item() == pytest.approx(
        (out["cls_loss"] + out["coral"]).item(), rel=1e-6)


def test_coral_loss_refuses_one_bad_input_of_two():
    with pytest.raises(ValueError, match="2-D"):
        coral_loss(torch.randn(8, 4), torch.randn(8, 4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        coral_loss(torch.randn(8, 4), torch.randn(1, 4))


def test_recipes_are_the_documented_settings():
    from tl_course.adapt import GaninCNN, Recipe, recipe_for

    assert recipe_for("dann") == Recipe() == recipe_for("source_only")
    coral = recipe_for("coral")
    assert (coral.optimizer_name, coral.lr, coral.epoch_factor) == ("adam", 1e-3, 2.0)
    assert recipe_for("dann_coral") == Recipe(coral_trade_off=3000.0)
    for method in ("adabn", "dann"):
        recipe = recipe_for(method)
        model = recipe.model()
        assert isinstance(model, GaninCNN) and model.head[-1].out_features == 10
        kinds = {type(m) for m in model.modules()}
        assert (nn.BatchNorm1d in kinds) == recipe.batchnorm
        assert ("input_bn" in model.blocks) == (recipe.normalize == "batch")
        assert model(torch.rand(2, 3, 28, 28)).shape == (2, 10)
    sgd, _ = Recipe().optimizer(Recipe().model(), 4)
    assert sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["lr"] == 0.01
    adam, _ = coral.optimizer(coral.model(), 4)
    assert adam.param_groups[0]["lr"] == 1e-3


def test_ganin_cnn_defaults_and_per_image_standardisation():
    from tl_course.adapt import GaninCNN, Standardize

    model = GaninCNN()
    assert model.head[-1].out_features == 10 and model.blocks["block1"][0].in_channels == 3
    assert "standardize" in model.blocks
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert [m.out_features for m in model.head if isinstance(m, nn.Linear)] == [100, 100, 10]
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 4, generator=gen)
    x[:, 1] += 5.0  # channels far apart: per image, not per channel
    x[1] = 0.5 + 1e-5 * x[1]  # nearly constant: eps matters
    z = Standardize()(x)
    flat = x.flatten(1)
    want = (flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True) + 1e-5)
    assert torch.allclose(z.flatten(1), want, atol=1e-5)


def test_paired_loader_names_the_empty_side_and_checks_both(cpu):
    empty = tlc.make_loader(_rgb_digits(3, 0), 8, cpu, drop_last=True)
    with pytest.raises(ValueError, match="the source loader is empty"):
        PairedLoader(empty, [1])

    class NoLen:
        def __iter__(self):
            return iter([])

    with pytest.raises(ValueError, match="the target loader is empty"):
        PairedLoader(NoLen(), empty)


def test_steps_refuse_models_and_batches_they_cannot_read(cpu):
    class FeaturesOnly(nn.Module):
        def features(self, x):
            return x

    with pytest.raises(TypeError, match="needs .features"):
        coral_step()(FeaturesOnly(), _dann_batch(), StepContext(cpu, True))
    model = tlc.models.DigitCNN(width=4, in_channels=3)
    (x_s, y_s), x_t = _dann_batch()
    with pytest.raises(TypeError, match="PairedLoader"):
        coral_step()(model, ((x_s, y_s), x_t, x_t), StepContext(cpu, True))


def test_run_method_passes_seed_epochs_and_profile_through(tiny_pair, cpu, monkeypatch):
    import tl_course.adapt.recipes as recipes

    seeds, epochs = [], []
    real_loaders, real_fit = recipes.Recipe.loaders, recipes.fit
    monkeypatch.setattr(recipes.Recipe, "loaders",
                        lambda self, pair, device, seed=0: seeds.append(seed)
                        or real_loaders(self, pair, device, seed))
    monkeypatch.setattr(recipes, "fit", lambda model, loader, **kw: epochs.append(kw["epochs"])
                        or real_fit(model, loader, **kw))
    _run("adabn", tiny_pair, cpu, seed=5)  # trains its bn_source_only model first
    assert seeds == [5, 5] and epochs == [1]
    recipe = _tiny_recipe("source_only")
    target_order = torch.cat([t[1] for _, t in recipe.loaders(tiny_pair, cpu, seed=2)[0]])
    want = tlc.make_loader(tiny_pair.target.train, 16, cpu, shuffle=True, seed=3,
                           drop_last=True)
    first_pass = torch.cat([y for _, y in want])  # then the target cycles anew
    assert torch.equal(target_order[:len(first_pass)], first_pass)


# ----------------------------------------------------------------- mutation survivors (adapt)


def test_adabn_measures_a_layer_used_twice_in_one_pass_per_batch_that_stops_there(cpu):
    """A BatchNorm module called twice per forward is still one layer: one pass per batch
    for it (plus one for the layer after it, and the first pass that finds the order),
    each pass ending at its last call, so the modules after it run only in the first."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.bn = nn.Linear(4, 3), nn.Linear(4, 3), nn.BatchNorm1d(3)
            self.after, self.tail = nn.BatchNorm1d(3), nn.Linear(3, 2)
            self.passes, self.tail_calls = 0, 0

        def forward(self, x):
            self.passes += 1
            h = self.after(self.bn(self.a(x)) + self.bn(self.b(x)))
            self.tail_calls += 1
            return self.tail(h)

    torch.manual_seed(0)
    model = Shared()
    batches = [torch.randn(5, 4), torch.randn(7, 4)]
    adapt_batchnorm(model, batches, cpu)
    assert model.passes == 1 + 2 * len(batches)  # 2 layers, however often each is called
    assert model.tail_calls == 1
    assert int(model.bn.num_batches_tracked) == int(model.after.num_batches_tracked) == 2


def test_baseline_steps_score_each_row_and_take_the_cross_entropy():
    """loss = mean(logsumexp(z) - z_y) and acc = share of rows whose argmax is the label,
    per row, for the source (source_only) and for the target (oracle)."""
    z_s = torch.tensor([[5.0, 0, 0, 1], [0, 5.0, 0, 0], [0, 0, 0, 5.0], [1.0, 2.0, 3.0, 0]])
    y_s = torch.tensor([0, 1, 0, 0])  # rows 0 and 1 right: 1/2
    z_t = torch.tensor([[0.0, 0, 7.0, 0], [0, 0, 0, 2.0], [3.0, 0, 0, 0]])
    y_t = torch.tensor([2, 3, 3])  # rows 0 and 1 right: 2/3
    ctx = StepContext(torch.device("cpu"), training=True)
    for step, z, y in ((source_only_step, z_s, y_s), (oracle_step, z_t, y_t)):
        out = step(nn.Identity(), ((z_s, y_s), (z_t, y_t)), ctx)
        zn, yn = z.numpy().astype(np.float64), y.numpy()
        ce = np.mean(np.log(np.exp(zn).sum(1)) - zn[np.arange(len(yn)), yn])
        acc = np.mean([int(np.argmax(row)) == label for row, label in zip(zn, yn, strict=True)])
        assert out["loss"].item() == pytest.approx(ce, rel=1e-6)
        assert out["acc"].item() == pytest.approx(acc) and out["n"] == len(yn)


def test_coral_step_adds_coral_with_weight_1_by_default_when_the_term_is_large(cpu):
    """On 2-D features of very different spread the CORAL term is of order 1, so the
    default weight (1) is visible in the loss: CE + 1 x CORAL, both written out here."""

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(2, 3)

        def features(self, x):
            return x * 1.0

    torch.manual_seed(0)
    model = Plain()
    gen = torch.Generator().manual_seed(1)
    x_s = torch.randn(6, 2, generator=gen) * torch.tensor([3.0, 0.5])
    x_t = torch.randn(5, 2, generator=gen) * torch.tensor([0.5, 3.0])
    y_s = torch.tensor([0, 1, 2, 0, 1, 2])
    out = coral_step()(model, ((x_s, y_s), x_t), StepContext(cpu, True))
    with torch.no_grad():
        ce = nn.functional.cross_entropy(model.head(x_s), y_s)
        coral = _coral_by_hand(x_s, x_t)
    assert coral.item() > 0.5  # not lost in the cross-entropy
    assert out["coral"].item() == pytest.approx(coral.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((ce + coral).item(), rel=1e-5)


def _pad_reference(a: np.ndarray, b: np.ndarray, seed: int) -> float:
    """The documented proxy A-distance: stratified half split (seeded), standardised
    features, logistic regression, 2 (1 - 2 err) on the held-out half."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([a, b])
    y = np.r_[np.ones(len(a)), np.zeros(len(b))]
    x_fit, x_test, y_fit, y_test = train_test_split(x, y, test_size=0.5, stratify=y,
                                                    random_state=seed)
    scaler = StandardScaler().fit(x_fit)
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(x_fit), y_fit)
    err = np.mean(clf.predict(scaler.transform(x_test)) != y_test)
    return 2.0 * (1.0 - 2.0 * err)


def _overlapping_domains() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 3)), rng.normal(size=(40, 3)) + np.r_[1.0, 0.0, 0.0]


def test_proxy_a_distance_is_seeded_with_0_by_default_like_the_reference():
    """Overlapping domains, where the split matters: the default is the reference at seed
    0, each seed reproduces the reference, and seeds 0 and 1 give different values."""
    from tl_course.adapt import proxy_a_distance

    a, b = _overlapping_domains()
    assert _pad_reference(a, b, 0) != _pad_reference(a, b, 1)  # the seed is visible here
    assert proxy_a_distance(a, b) == pytest.approx(_pad_reference(a, b, 0), abs=1e-12)
    for seed in (1, 2):
        assert proxy_a_distance(a, b, seed=seed) == pytest.approx(
            _pad_reference(a, b, seed), abs=1e-12)


def test_proxy_a_distance_does_not_depend_on_the_units_of_each_feature():
    """Standardised features: rescaling a feature (the informative one to 1e-4, a noisy
    one to 1e3) changes nothing, for every seed."""
    from tl_course.adapt import proxy_a_distance

    a, b = _overlapping_domains()
    units = np.r_[1e-4, 1e3, 1.0]
    for seed in range(4):
        assert proxy_a_distance(a * units, b * units, seed=seed) == pytest.approx(
            proxy_a_distance(a, b, seed=seed), abs=1e-12)


def test_proxy_a_distance_splits_each_domain_in_half_and_4_examples_are_enough():
    """Indistinguishable points, 4 source vs 12 target: the classifier can only predict
    the majority (target), so it errs on exactly the held-out sources. Stratified, they
    are 2 of the 8 held out for every seed: err = 1/4, distance 2 (1 - 2/4) = 1."""
    from tl_course.adapt import proxy_a_distance

    same_s, same_t = np.zeros((4, 2)), np.zeros((12, 2))
    err = (4 / 2) / ((4 + 12) / 2)
    for seed in range(6):
        assert proxy_a_distance(same_s, same_t, seed=seed) == pytest.approx(2 * (1 - 2 * err))
    far = np.ones((4, 2)) * 10.0
    assert proxy_a_distance(far, same_s) == pytest.approx(2.0)  # 4 and 4: separable


def test_proxy_a_distance_refuses_a_single_array_of_the_wrong_rank():
    from tl_course.adapt import proxy_a_distance

    for a, b in ((np.zeros((10, 3)), np.zeros((10, 3, 2))),
                 (np.zeros((10, 3, 2)), np.zeros((10, 3)))):
        with pytest.raises(ValueError, match="needs two 2-D feature arrays"):
            proxy_a_distance(a, b)


def test_gradient_reversal_defaults_to_lambda_1():
    """grad_reverse(x) and GradientReverseFunction.apply(x) without a coefficient are
    the plain reversal: dL/dx = -dL/dy."""
    from tl_course.adapt import GradientReverseFunction

    incoming = torch.tensor([0.5, -2.0, 3.0])
    for reverse in (grad_reverse, GradientReverseFunction.apply):
        x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
        y = reverse(x)
        assert torch.equal(y, x)
        y.backward(incoming)
        assert torch.equal(x.grad, -incoming)


def test_run_method_dann_coral_uses_the_recipes_weights_and_trade_off_on_one_step(tiny_pair,
                                                                                  cpu):
    """One batch per epoch: the logged loss is the first step's, before any update, so
    it is exactly CE + w_dann x domain + w_coral x CORAL with the recipe's weights (or
    trade_off in place of w_dann)."""
    import dataclasses

    recipe = dataclasses.replace(_tiny_recipe("dann_coral"), batch_size=40,
                                 dann_trade_off=0.5, coral_trade_off=500.0)
    for trade_off, w_dann in ((None, 0.5), (2.0, 2.0)):
        h = _run("dann_coral", tiny_pair, cpu, recipe=recipe, trade_off=trade_off).history
        want = (h["train_cls_loss"][0] + w_dann * h["train_domain_loss"][0]
                + 500.0 * h["train_coral"][0])
        assert 500.0 * h["train_coral"][0] > 1e-3 * want  # the CORAL term is visible
        assert h["train_loss"][0] == pytest.approx(want, rel=1e-5)


def test_run_method_adabn_shows_progress_for_the_source_model_it_trains(tiny_pair, cpu,
                                                                        capsys):
    _run("adabn", tiny_pair, cpu, progress=True)
    assert "bn_source_only" in capsys.readouterr().err
    _run("adabn", tiny_pair, cpu)
    assert "bn_source_only" not in capsys.readouterr().err


def test_run_method_uses_the_methods_own_recipe_by_default(cpu):
    """Without recipe=, run_method trains with recipe_for(method): for coral, Adam."""
    from tl_course.adapt import recipe_for, run_method
    from tl_course.data import DigitsData
    from tl_course.domains import DomainPair

    pair = DomainPair(DigitsData("s", _rgb_digits(64, 0), _rgb_digits(8, 1), "made up"),
                      DigitsData("t", _rgb_digits(64, 2, 0.3), _rgb_digits(8, 3, 0.3),
                                 "made up"))
    result = run_method("coral", pair, tlc.get_profile("smoke"), cpu, epochs=1)
    assert result.recipe == recipe_for("coral") and result.history.epochs == 1


def test_method_result_proxy_a_distance_uses_seed_0_by_default(cpu):
    """The features of the two test sets, measured as the reference does at seed 0."""
    from tl_course.adapt import MethodResult, Recipe
    from tl_course.data import DigitsData
    from tl_course.domains import DomainPair

    class Identity(nn.Module):
        def features(self, x):
            return x

    a, b = _overlapping_domains()
    assert _pad_reference(a, b, 0) != _pad_reference(a, b, 1)
    ds = lambda f: TensorDataset(torch.tensor(f, dtype=torch.float32), torch.zeros(len(f)))
    pair = DomainPair(DigitsData("s", ds(a), ds(a), "made up"),
                      DigitsData("t", ds(b), ds(b), "made up"))
    result = MethodResult("source_only", Identity(), 0.0, 0.0, None, Recipe())
    f_s = np.asarray(torch.tensor(a, dtype=torch.float32), dtype=np.float64)
    f_t = np.asarray(torch.tensor(b, dtype=torch.float32), dtype=np.float64)
    assert result.proxy_a_distance(pair, cpu) == pytest.approx(_pad_reference(f_s, f_t, 0))


def test_adam_recipe_uses_the_recipes_learning_rate():
    """Adam's first step moves every parameter by lr x sign(grad) (m / sqrt(v) = sign):
    with lr 0.05, by 0.05, not by Adam's default 1e-3."""
    from tl_course.adapt import Recipe

    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    before = [p.detach().clone() for p in model.parameters()]
    opt, sched = Recipe(optimizer_name="adam", lr=0.05).optimizer(model, epochs=3)
    assert sched is None
    model(torch.randn(8, 3)).pow(2).mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    for p, p0, g in zip(model.parameters(), before, grads, strict=True):
        assert torch.allclose(p.detach() - p0, -0.05 * torch.sign(g), atol=1e-5)
