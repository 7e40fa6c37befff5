"""Domain adaptation: gradient reversal, CORAL, AdaBN, the paired loader and DANN through fit."""

from __future__ import annotations

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
