"""tl_course.selfsup: NT-Xent against its formula, views, rotations, pretraining, episodes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from tl_course import selfsup as ss
from tl_course.features import Features
from tl_course.selfsup import pretraining
from tl_course.train import StepContext

CPU = torch.device("cpu")


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """Chen et al. (2020), eq. 1, summed over both orderings of every positive pair, with
    loops over plain numpy: l(i, j) = -log exp(sim(i, j)/t) / sum_{k != i} exp(sim(i, k)/t)."""
    z = np.concatenate([z1.numpy(), z2.numpy()]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        denom = sum(math.exp(z[i] @ z[k] / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(z[i] @ z[j] / t) / denom)
    return total / n2


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent_matches_the_paper_formula(t):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert ss.nt_xent(z1, z2, t).item() == pytest.approx(reference_nt_xent(z1, z2, t), rel=1e-5)


def test_nt_xent_is_symmetric_in_the_two_views():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    assert ss.nt_xent(z1, z2).item() == pytest.approx(ss.nt_xent(z2, z1).item(), rel=1e-6)


def test_nt_xent_is_low_when_pairs_match_and_others_are_far():
    n = 8
    apart = torch.eye(n) * 5  # each image its own direction, views identical
    g = torch.Generator().manual_seed(2)
    random = ss.nt_xent(torch.randn(n, n, generator=g), torch.randn(n, n, generator=g), 0.5)
    matched = ss.nt_xent(apart, apart, 0.5)
    assert matched < random
    # With orthogonal embeddings the loss has a closed form: partner similarity 1, the 2N-2
    # others 0 -> -log(e^{1/t} / (e^{1/t} + 2N - 2)).
    t = 0.5
    assert matched.item() == pytest.approx(-math.log(math.exp(1 / t) / (math.exp(1 / t)
                                                                        + 2 * n - 2)), rel=1e-5)


def test_a_collapsed_batch_scores_log_2n_minus_1_not_zero():
    """All embeddings equal: the views 'match', yet nothing tells images apart."""
    n = 8
    same = torch.ones(n, 3)
    assert ss.nt_xent(same, same).item() == pytest.approx(math.log(2 * n - 1), rel=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda: ss.nt_xent_stacked(torch.randn(7, 4)), "odd count"),
    (lambda: ss.nt_xent(torch.randn(4, 3), torch.randn(5, 3)), "same shape"),
    (lambda: ss.nt_xent(torch.randn(4, 3), torch.randn(4, 3), temperature=0), "> 0"),
    (lambda: ss.nt_xent(torch.randn(1, 3), torch.randn(1, 3)), "N >= 2"),
    (lambda: ss.nt_xent_stacked(torch.randn(4, 3, 2)), r"\(2N, D\)"),
    (lambda: ss.make_pretext("jigsaw"), "unknown pretraining method 'jigsaw'"),
    (lambda: ss.Views().without("blur"), "unknown transformation 'blur'"),
    (lambda: ss.Views(crop=(0.5, 1.5)), "crop"),
    (lambda: ss.rotate_batch(torch.zeros(3, 1, 4, 4), torch.zeros(2, dtype=torch.long)),
     "one rotation per image"),
    (lambda: ss.unlabelled(torch.zeros(5, 784)), r"\(N, C, H, W\)"),
])
def test_bad_input_is_one_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _digits(n: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, 8:20, 10:18] = torch.rand(n, 1, 12, 8, generator=g)
    return x


def test_two_views_differ_but_keep_shape_and_range():
    torch.manual_seed(0)
    x = _digits()
    v1, v2 = ss.two_views(x, ss.Views())
    assert v1.shape == v2.shape == x.shape
    assert v1.min() >= 0 and v1.max() <= 1
    assert (v1 - v2).abs().mean() > 0.01 and (v1 - x).abs().mean() > 0.01


def test_views_with_everything_off_are_the_image():
    views = ss.Views()
    for name in ss.TRANSFORMS:
        views = views.without(name)
    x = _digits()
    assert torch.allclose(ss.augment(x, views), x, atol=1e-5)


@pytest.mark.parametrize("name", ss.TRANSFORMS)
def test_each_switch_changes_the_view_alone(name):
    """Only `name` on: the view still differs from the image (the switch is wired)."""
    only = ss.Views()
    for other in ss.TRANSFORMS:
        if other != name:
            only = only.without(other)
    torch.manual_seed(0)
    x = _digits()
    assert (ss.augment(x, only) - x).abs().mean() > 1e-3


def test_rotation_labels_match_quarter_turns():
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    turns = torch.tensor([1, 3])
    out = ss.rotate_batch(x, turns)
    assert torch.equal(out[0], torch.rot90(x[0], 1, dims=(1, 2)))
    assert torch.equal(out[1], torch.rot90(x[1], 3, dims=(1, 2)))
    # a half turn of a half turn is the image: why 6 and 9 confuse rotation prediction
    assert torch.equal(ss.rotate_batch(ss.rotate_batch(x, torch.tensor([2, 2])),
                                       torch.tensor([2, 2])), x)


def test_simclr_trains_its_encoder_through_the_projection():
    torch.manual_seed(0)
    model, step = ss.make_pretext("simclr")
    x = _digits(8)
    assert model(x).shape == (8, 64) and model.features(x).shape == (8, 128)
    out = step(model, (x,), StepContext(CPU, True))
    out["loss"].backward()
    body = [*model.encoder.blocks.parameters(), *model.encoder.pool.parameters()]
    grads = [p.grad for p in body]  # the encoder's own head is not used in pretraining
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("method", ss.METHODS)
def test_short_pretraining_lowers_the_pretext_loss(method):
    torch.manual_seed(0)
    images = _digits(64)
    _, history = ss.pretrain(method, images, CPU, steps=40, batch_size=32, seed=0)
    losses = history["train_loss"]
    assert losses[-1] < losses[0], f"{method}: {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_knn_accuracy_against_a_direct_count():
    g = torch.Generator().manual_seed(3)
    bank = Features(torch.randn(20, 6, generator=g), torch.arange(20) % 4)
    test = Features(torch.randn(30, 6, generator=g), torch.arange(30) % 4)
    got = ss.knn_predict_accuracy(bank, test)
    a = bank.x.numpy() / np.linalg.norm(bank.x.numpy(), axis=1, keepdims=True)
    b = test.x.numpy() / np.linalg.norm(test.x.numpy(), axis=1, keepdims=True)
    want = np.mean(bank.y.numpy()[np.argmax(b @ a.T, axis=1)] == test.y.numpy())
    assert got == pytest.approx(want)


def test_knn_monitor_leaves_the_model_in_train_mode():
    model, _ = ss.make_pretext("simclr")
    model.train()
    x = _digits(20)
    ds = TensorDataset(x, torch.arange(20) % 2)
    ss.KnnMonitor(ds, ds)(model, CPU)
    assert model.training


def test_pretrained_is_cached_and_reloaded(tmp_path, monkeypatch):
    images = _digits(64)
    first = ss.pretrained("rotation", images, CPU, steps=4, data_tag="t", root=tmp_path)
    calls = []
    monkeypatch.setattr(pretraining, "pretrain", lambda *a, **k: calls.append(1))
    second = ss.pretrained("rotation", images, CPU, steps=4, data_tag="t", root=tmp_path)
    assert not calls
    for p, q in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    assert len(list((tmp_path / "models").glob("selfsup_rotation_t_st4_s0.pt"))) == 1


def test_episodes_are_k_per_class_paired_and_seeded():
    labels = torch.arange(100) % 10
    a = ss.episode_indices(labels, 3, 4, seed=0)
    b = ss.episode_indices(labels, 3, 4, seed=0)
    assert all(torch.equal(i, j) for i, j in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1])
    for idx in a:
        assert torch.bincount(labels[idx], minlength=10).tolist() == [3] * 10
    with pytest.raises(ValueError, match="between 1 and 10"):
        ss.episode_indices(labels, 11, 1)


def test_augmented_step_does_not_augment_in_evaluation():
    torch.manual_seed(0)
    model = ss.DigitEncoder().eval()
    x, y = _digits(4), torch.tensor([0, 1, 2, 3])
    step = ss.AugmentedStep(ss.Views())
    out = step(model, (x, y), StepContext(CPU, False))
    want = torch.nn.functional.cross_entropy(model(x), y)
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-6)


def test_pretraining_images_and_test_digits_are_disjoint():
    """Notebook 06 pretrains on `digits.train` images; none may be a test digit. Offline
    (smoke, and cpu without the full set) both come from this 4,000 / 1,000 split."""
    from tl_course.data import mnist_sample

    train_ds, test_ds = mnist_sample()
    train = {bytes(row.numpy()) for row in (train_ds.tensors[0] * 255).byte().flatten(1)}
    test = {bytes(row.numpy()) for row in (test_ds.tensors[0] * 255).byte().flatten(1)}
    assert train and test and not train & test


# ----------------------------------------------------------------- defining properties (issue 17)


class _Recorder(torch.nn.Module):
    """Records its input and embeds each image by its flattened pixels."""

    def forward(self, x):
        self.seen = x.detach().clone()
        return x.flatten(1)


def test_simclr_step_feeds_two_independent_views_of_each_image_to_nt_xent():
    torch.manual_seed(0)
    x = _digits(6)
    model = _Recorder()
    out = ss.SimCLRStep(ss.Views(), temperature=0.5)(model, (x,), StepContext(CPU, True))
    views = model.seen
    assert views.shape == (12, 1, 28, 28)
    first, second = views[:6], views[6:]
    assert all(not torch.equal(first[i], second[i]) for i in range(6))  # two views
    want = reference_nt_xent(first.flatten(1), second.flatten(1), 0.5)
    assert out["loss"].item() == pytest.approx(want, rel=1e-5)


def test_simclr_views_of_one_image_are_closer_than_views_of_others():
    """Row i and row i + N both come from image i (not, say, a shuffled batch)."""
    torch.manual_seed(0)
    x = torch.zeros(4, 1, 28, 28)
    for i in range(4):  # four very different images: a bar in a different place each
        x[i, 0, 4 + 5 * i:8 + 5 * i, 6:22] = 1.0
    model = _Recorder()
    views = ss.Views(crop=(0.9, 1.0), shift=0.02, rotate=5.0, noise=0.05)
    ss.SimCLRStep(views)(model, (x,), StepContext(CPU, True))
    v = model.seen.flatten(1)
    dist = torch.cdist(v[:4], v[4:])
    assert torch.equal(dist.argmin(1), torch.arange(4))


def test_denoising_autoencoder_reconstructs_the_clean_image():
    x = _digits(5)
    step = ss.AutoEncoderStep(noise=0.3)
    torch.manual_seed(1)
    out = step(torch.nn.Identity(), (x,), StepContext(CPU, True))  # "reconstructs" its input
    torch.manual_seed(1)
    noisy = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    want = torch.nn.functional.mse_loss(noisy, x)
    assert want > 0 and out["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    plain = ss.AutoEncoderStep(noise=0.0)(torch.nn.Identity(), (x,), StepContext(CPU, True))
    assert plain["loss"].item() == 0.0


def test_rotation_step_labels_each_image_with_its_own_quarter_turns():
    x = _digits(8)
    model, head = _Recorder(), torch.nn.Linear(784, 4)
    net = torch.nn.Sequential(model, head)
    torch.manual_seed(3)
    out = ss.RotationStep()(net, (x,), StepContext(CPU, True))
    torch.manual_seed(3)
    turns = torch.randint(0, 4, (8,))
    assert len(set(turns.tolist())) > 1
    assert torch.equal(model.seen, ss.rotate_batch(x, turns))
    with torch.no_grad():
        logits = head(model.seen.flatten(1))
    want = torch.nn.functional.cross_entropy(logits, turns)
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-6)


def test_train_few_gives_the_encoder_its_own_learning_rate():
    """encoder_lr=0 freezes everything but the head in effect; the head still learns."""
    images = _digits(20)
    data = TensorDataset(images, torch.arange(20) % 4)
    torch.manual_seed(0)
    model = ss.classifier_from(ss.DigitEncoder(), 4)
    body = {k: v.clone() for k, v in model.blocks.named_parameters()}
    head = model.head[-1].weight.detach().clone()
    ss.train_few(model, data, CPU, steps=3, lr=1e-2, views=None, encoder_lr=0.0)
    assert all(torch.equal(body[k], v) for k, v in model.blocks.named_parameters())
    assert not torch.equal(head, model.head[-1].weight)


def test_classifier_from_copies_the_encoder_with_a_fresh_head():
    torch.manual_seed(0)
    encoder = ss.DigitEncoder(num_classes=5)
    clf = ss.classifier_from(encoder, 3)
    assert clf.head[-1].out_features == 3 and encoder.head[-1].out_features == 5
    x = _digits(4)
    encoder.eval()
    clf.eval()
    with torch.no_grad():
        assert torch.equal(clf.features(x), encoder.features(x))
    next(clf.blocks.parameters()).data.add_(1.0)  # a copy, not the same encoder
    assert not torch.equal(next(clf.blocks.parameters()), next(encoder.blocks.parameters()))


def test_episodes_differ_across_seeds_and_hold_each_class():
    labels = torch.arange(60) % 6
    a = ss.episode_indices(labels, 2, 3, seed=0)
    b = ss.episode_indices(labels, 2, 3, seed=1)
    assert any(not torch.equal(i, j) for i, j in zip(a, b, strict=True))
    for idx in a + b:
        assert len(set(idx.tolist())) == len(idx) == 12


# ------------------------------------------------------------- pinned against references (mutants)


def test_nt_xent_default_temperature_is_one_half():
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    assert ss.nt_xent(z1, z2).item() == pytest.approx(reference_nt_xent(z1, z2, 0.5), rel=1e-5)


@pytest.mark.parametrize("kwargs", [dict(crop=(0.0, 1.0)), dict(shift=-0.1), dict(rotate=-1.0),
                                    dict(noise=-0.1)])
def test_each_view_setting_is_checked_on_its_own(kwargs):
    """A zero-size crop, or any one negative strength, is refused."""
    with pytest.raises(ValueError):
        ss.Views(**kwargs)


def test_every_method_keeps_the_same_digit_encoder():
    """Probes compare methods on one architecture: each model's encoder is a DigitEncoder
    with the default width, and `features` is that encoder's embedding."""
    want = {k: v.shape for k, v in ss.DigitEncoder().state_dict().items()}
    x = _digits(3)
    for method in ss.METHODS:
        model, _ = ss.make_pretext(method)
        assert {k: v.shape for k, v in model.encoder.state_dict().items()} == want, method
        model.eval()
        with torch.no_grad():
            assert torch.equal(model.features(x), model.encoder.features(x)), method


def test_autoencoder_decodes_its_features_into_an_image_in_0_1():
    """Decoder: linear -> ReLU -> 64x7x7 -> transposed conv (14x14) -> ReLU -> transposed
    conv (28x28, one channel) -> sigmoid, recomputed with plain functional calls."""
    torch.manual_seed(0)
    model = ss.AutoEncoderNet().eval()
    x = _digits(3)
    with torch.no_grad():
        out = model(x)
        f = model.encoder.features(x)
        lin = [m for m in model.decoder if isinstance(m, torch.nn.Linear)]
        convs = [m for m in model.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
        assert len(lin) == 1 and len(convs) == 2
        h = torch.relu(lin[0](f)).reshape(3, 64, 7, 7)
        h = torch.relu(torch.nn.functional.conv_transpose2d(h, convs[0].weight, convs[0].bias,
                                                            stride=2, padding=1))
        want = torch.sigmoid(torch.nn.functional.conv_transpose2d(
            h, convs[1].weight, convs[1].bias, stride=2, padding=1))
    assert out.shape == x.shape
    assert torch.allclose(out, want, atol=1e-6)


def test_rotation_net_has_one_logit_per_quarter_turn():
    torch.manual_seed(0)
    model = ss.RotationNet().eval()
    x = _digits(3)
    with torch.no_grad():
        assert model(x).shape == (3, 4)
        assert torch.allclose(model(x), model.head(model.encoder.features(x)))


def test_plain_autoencoder_adds_no_noise_and_counts_images():
    """noise=0 (the default) feeds the image itself: no random numbers are drawn."""
    x = _digits(5)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    out = ss.AutoEncoderStep()(torch.nn.Identity(), (x,), StepContext(CPU, True))
    assert torch.equal(torch.get_rng_state(), state)
    assert out["loss"].item() == 0.0 and out["n"] == 5


def test_rotation_step_reports_its_accuracy_and_batch_size():
    x = _digits(8)
    torch.manual_seed(0)
    head = torch.nn.Linear(784, 4)
    net = torch.nn.Sequential(torch.nn.Flatten(), head)
    torch.manual_seed(5)
    out = ss.RotationStep()(net, (x,), StepContext(CPU, True))
    torch.manual_seed(5)
    turns = torch.randint(0, 4, (8,))
    with torch.no_grad():
        pred = net(ss.rotate_batch(x, turns)).argmax(1)
    want = (pred == turns).float().mean().item()
    assert 0 < want < 1 and want != 0.5
    assert out["acc"].item() == pytest.approx(want) and out["n"] == 8


class _Fixed(torch.nn.Module):
    """Returns the given embeddings whatever the (2N) views are."""

    def __init__(self, z):
        super().__init__()
        self.z = z

    def forward(self, x):
        assert x.shape[0] == len(self.z)
        return self.z


def test_simclr_step_uses_its_temperature_and_pairs_by_cosine_similarity():
    """pair_acc: how often row i's most cosine-similar other row is its partner i +/- N."""
    g = torch.Generator().manual_seed(7)
    n = 6
    z1 = torch.randn(n, 3, generator=g)
    z2 = z1 + 0.6 * torch.randn(n, 3, generator=g)
    z = torch.cat([z1, z2]) * torch.logspace(-1, 1, 2 * n)[:, None]  # very different norms
    out = ss.SimCLRStep(ss.Views(), temperature=0.2)(_Fixed(z), (_digits(n),),
                                                      StepContext(CPU, True))
    assert out["loss"].item() == pytest.approx(reference_nt_xent(z[:n], z[n:], 0.2), rel=1e-5)
    zn = z.numpy() / np.linalg.norm(z.numpy(), axis=1, keepdims=True)
    hits = []
    for i in range(2 * n):
        best = max((j for j in range(2 * n) if j != i), key=lambda j: zn[i] @ zn[j])
        hits.append(best == (i + n) % (2 * n))
    want = float(np.mean(hits))
    assert 0 < want < 1 and want != 0.5
    assert out["pair_acc"].item() == pytest.approx(want) and out["n"] == n


def test_classifier_from_has_ten_classes_by_default():
    """The course's tasks are digits: ten logits unless told otherwise."""
    clf = ss.classifier_from(ss.DigitEncoder(num_classes=5)).eval()
    with torch.no_grad():
        assert clf(_digits(2)).shape == (2, 10)


def reference_episodes(labels, k, episodes, seed):
    """Per episode: a generator seeded from (seed, episode, k); per class in label order,
    the first k of a random permutation of that class's indices."""
    out = []
    for e in range(episodes):
        gen = torch.Generator().manual_seed(seed * 100_003 + e * 101 + k)
        picks = []
        for c in sorted(set(labels.tolist())):
            where = [i for i, lab in enumerate(labels.tolist()) if lab == c]
            perm = torch.randperm(len(where), generator=gen)[:k].tolist()
            picks += [where[p] for p in perm]
        out.append(picks)
    return out


@pytest.mark.parametrize("k", [1, 4])
def test_episodes_reproduce_seeded_draws_without_replacement(k):
    """Unbalanced, unsorted labels: each episode is k distinct pool indices per class (k = 1
    and k = the smallest class both allowed), drawn as documented; seed 0 by default."""
    g = torch.Generator().manual_seed(7)
    labels = torch.cat([torch.zeros(4), torch.ones(6), torch.full((5,), 2.0)]).long()
    labels = labels[torch.randperm(len(labels), generator=g)]
    got = ss.episode_indices(labels, k, 3)
    assert [i.tolist() for i in got] == reference_episodes(labels, k, 3, 0)
    for idx in got:
        assert len(set(idx.tolist())) == len(idx) == 3 * k
    later = ss.episode_indices(labels, k, 3, seed=2)
    assert [i.tolist() for i in later] == reference_episodes(labels, k, 3, 2)
    with pytest.raises(ValueError, match="between 1 and 4"):
        ss.episode_indices(labels, 0, 1)


def _probe_data(n_train=200, seed=0):
    """Correlated, noisy features of three classes: the probe needs hundreds of iterations."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n_train + 300, 3, generator=g)
    x = base @ torch.randn(3, 50, generator=g) + 1e-2 * torch.randn(n_train + 300, 50,
                                                                     generator=g)
    y = (base[:, 0] > 0).long() + (base[:, 1] > 0).long()
    return Features(x[:n_train], y[:n_train]), Features(x[n_train:], y[n_train:])


def reference_probe(train, test, c):
    """Standardised with the training rows' statistics; logistic regression to convergence."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train.x.numpy())
    clf = LogisticRegression(C=c, max_iter=100_000)
    clf.fit(scaler.transform(train.x.numpy()), train.y.numpy())
    pred = clf.predict(scaler.transform(test.x.numpy()))
    return float(np.mean(pred == test.y.numpy()))


def test_probe_accuracy_is_a_converged_logistic_regression_on_standardised_features():
    train, test = _probe_data()
    assert ss.probe_accuracy(train, test, c=1e3) == pytest.approx(reference_probe(train, test,
                                                                                  1e3))
    assert ss.probe_accuracy(train, test) == pytest.approx(reference_probe(train, test, 1.0))


def test_probe_episodes_probe_each_episodes_rows():
    train, test = _probe_data(60, seed=1)
    draws = ss.episode_indices(train.y, 5, 3)
    got = ss.probe_episodes(train, test, draws)
    want = [reference_probe(Features(train.x[i], train.y[i]), test, 1.0) for i in draws]
    assert got == pytest.approx(want)
    assert ss.probe_episodes(train, test, draws, c=0.01) == pytest.approx(
        [reference_probe(Features(train.x[i], train.y[i]), test, 0.01) for i in draws])


def _tiny(seed=0):
    """A small classifier of 1x8x8 images, with batch norm (train and eval modes differ)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8),
                               torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _few(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def reference_train_few(model, x, y, *, steps, lr, views, seed=0, batch_size=32):
    """A bare loop: seed torch, shuffled batches of 32 from a generator seeded `seed`, about
    `steps` steps in whole epochs, AdamW(lr, weight decay 1e-4), cross-entropy on a fresh view
    of each batch when `views` are given; the model ends in eval mode."""
    from torch.utils.data import DataLoader

    torch.manual_seed(seed)
    loader = DataLoader(TensorDataset(x, y), batch_size=min(batch_size, len(x)), shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    for _ in range(max(1, round(steps / len(loader)))):
        for xb, yb in loader:
            if views is not None:
                xb = ss.augment(xb, views)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model.eval()


def reference_accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


@pytest.mark.parametrize("views, steps", [(None, 2), (ss.Views(), 1)])
def test_train_few_matches_a_bare_training_loop(views, steps, capsys):
    """40 images, batches of 32 (two a pass), seed 0 by default; silent (no progress bar)."""
    x, y = _few(40, 0)
    got = ss.train_few(_tiny(), TensorDataset(x, y), CPU, steps=steps, lr=0.05, views=views)
    want = reference_train_few(_tiny(), x, y, steps=steps, lr=0.05, views=views)
    assert not got.training
    for p, q in zip(got.state_dict().values(), want.state_dict().values(), strict=True):
        assert torch.allclose(p.float(), q.float(), rtol=1e-5, atol=1e-7)
    assert capsys.readouterr().err == ""


def test_accuracy_on_scores_the_model_in_eval_mode():
    x, y = _few(30, 1)
    model = _tiny().train()
    model(x)  # running statistics away from their initial values
    want = reference_accuracy(model, x, y)
    model.train()
    assert ss.fewshot.accuracy_on(model, TensorDataset(x, y), CPU) == pytest.approx(want)


def test_train_episodes_train_a_fresh_model_per_episode_with_its_own_seed():
    """Episode e: a fresh make_model(), trained on the pool's rows of draw e with seed e,
    scored on the whole test set."""
    x, y = _few(60, 2)
    y = torch.arange(60) % 3
    xt, yt = _few(300, 3)
    draws = ss.episode_indices(y, 12, 2)  # 36 images: two batches a pass
    views = ss.Views(noise=0.0)
    got = ss.train_episodes(_tiny, TensorDataset(x, y), TensorDataset(xt, yt), draws, CPU,
                            steps=2, lr=0.05, views=views)
    want = [reference_accuracy(reference_train_few(_tiny(), x[i], y[i], steps=2, lr=0.05,
                                                   views=views, seed=e), xt, yt)
            for e, i in enumerate(draws)]
    assert got == pytest.approx(want)


def test_train_episodes_draw_each_fresh_model_from_its_episode_seed():
    """A make_model() that draws from the global generator (a fresh head) gets episode e's
    seed: the accuracies do not depend on what ran before, and equal a bare loop that
    seeds e, builds the model, then trains it with seed e. Two sources are so paired."""
    x, y = _few(60, 2)
    y = torch.arange(60) % 3
    xt, yt = _few(300, 3)
    draws = ss.episode_indices(y, 8, 3)

    def fresh():
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8),
                                   torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                   torch.nn.Linear(8, 3))

    kw = dict(steps=2, lr=0.05, views=None)
    torch.manual_seed(11)
    first = ss.train_episodes(fresh, TensorDataset(x, y), TensorDataset(xt, yt), draws, CPU,
                              **kw)
    torch.manual_seed(12)
    second = ss.train_episodes(fresh, TensorDataset(x, y), TensorDataset(xt, yt), draws, CPU,
                               **kw)
    want = []
    for e, i in enumerate(draws):
        torch.manual_seed(e)
        want.append(reference_accuracy(reference_train_few(fresh(), x[i], y[i], seed=e, **kw),
                                       xt, yt))
    assert first == second
    assert first == pytest.approx(want)
    assert len(set(first)) > 1  # the episodes differ, so the check compares something


def test_augmented_step_trains_on_a_fresh_view_and_reports_accuracy():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    x = _digits(8)
    views = ss.Views()
    torch.manual_seed(1)
    view = ss.augment(x, views)
    with torch.no_grad():
        pred = model(view).argmax(1)
    assert len(set(pred.tolist())) > 2
    y = torch.where(torch.arange(8) < 3, pred, (pred + 1) % 10)  # 3 of 8 right on that view
    torch.manual_seed(1)
    out = ss.AugmentedStep(views)(model, (x, y), StepContext(CPU, True))
    want = torch.nn.functional.cross_entropy(model(view), y)
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    assert out["acc"].item() == pytest.approx(3 / 8) and out["n"] == 8


def test_pretrained_caches_one_run_per_setting(tmp_path, monkeypatch, capsys):
    """SimCLR's cache key holds views, temperature and seed; the other methods ignore views
    and temperature. A cached run is `pretrain` with exactly the given settings, silently,
    saved under the data folder by default."""
    calls = []

    def fake_pretrain(method, images, device, **kwargs):
        calls.append(kwargs)
        torch.manual_seed(len(calls))
        return ss.make_pretext(method)[0], None

    monkeypatch.setattr(pretraining, "pretrain", fake_pretrain)
    monkeypatch.setattr(pretraining, "data_dir", lambda: tmp_path)
    images = _digits(4)
    monitor = ss.KnnMonitor(TensorDataset(images, torch.arange(4)), TensorDataset(images,
                                                                                  torch.arange(4)))
    views = ss.Views(crop=(0.6, 1.0))

    def run(method="simclr", **kw):
        before = len(calls)
        model = ss.pretrained(method, images, CPU, steps=2, data_tag="t", **kw)
        return model, len(calls) > before

    first, trained = run(views=views, temperature=0.2, seed=1, monitor=monitor)
    assert trained and calls[-1] == dict(steps=2, seed=1, views=views, temperature=0.2,
                                         monitor=monitor, progress=False)
    again, trained = run(views=views, temperature=0.2, seed=1)
    assert not trained
    for p, q in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    for changed in [dict(views=views, temperature=0.3, seed=1),
                    dict(views=ss.Views(crop=(0.7, 1.0)), temperature=0.2, seed=1),
                    dict(views=views, temperature=0.2, seed=2)]:
        assert run(**changed)[1], changed
    assert run(temperature=0.5)[1] and not run()[1]  # 0.5 is the default temperature
    assert run("rotation")[1] and not run("rotation", views=views, temperature=0.2)[1]
    assert len(list((tmp_path / "models").glob("selfsup_*.pt"))) == 6
    assert capsys.readouterr().err == ""


def test_nt_xent_stacked_defaults_to_t_one_half_and_takes_two_images():
    """The smallest batch, N = 2 (4 rows), is allowed; rows i and i + N are partners."""
    g = torch.Generator().manual_seed(8)
    z = torch.randn(4, 3, generator=g)
    assert ss.nt_xent_stacked(z).item() == pytest.approx(reference_nt_xent(z[:2], z[2:], 0.5),
                                                         rel=1e-5)


def test_simclr_step_defaults_to_t_one_half_and_refuses_t_zero():
    g = torch.Generator().manual_seed(9)
    z = torch.randn(8, 3, generator=g)
    out = ss.SimCLRStep()(_Fixed(z), (_digits(4),), StepContext(CPU, True))
    assert out["loss"].item() == pytest.approx(reference_nt_xent(z[:4], z[4:], 0.5), rel=1e-5)
    with pytest.raises(ValueError, match="> 0"):
        ss.SimCLRStep(temperature=0.0)


def test_simclr_projection_head_is_linear_bn_relu_linear():
    """Chen et al.'s projection MLP on the 128 features: linear, batch norm, ReLU, linear."""
    torch.manual_seed(0)
    model = ss.SimCLRNet(proj_dim=16).eval()
    x = _digits(3)
    with torch.no_grad():
        f = model.encoder.features(x)
        lin = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
        bn = [m for m in model.projector if isinstance(m, torch.nn.BatchNorm1d)]
        assert len(lin) == 2 and len(bn) == 1
        h = torch.relu(torch.nn.functional.batch_norm(lin[0](f), bn[0].running_mean,
                                                      bn[0].running_var, bn[0].weight,
                                                      bn[0].bias, False))
        assert torch.allclose(model(x), lin[1](h), atol=1e-6)
        assert model(x).shape == (3, 16)


def reference_augment(x, views):
    """One view by hand: per image (drawn in this order from torch's generator) a zoom
    s ~ U(crop), an angle ~ U(-rotate, rotate) degrees, shifts ~ U(-shift, shift) of the side;
    output pixel p samples the input at s * R(angle) p + shift (coordinates in [-1, 1] over
    pixel centres), bilinearly with zeros outside; then N(0, noise^2) noise, clamped to [0, 1]."""
    n, _, h, w = x.shape
    scale = views.crop[0] + (views.crop[1] - views.crop[0]) * torch.rand(n)
    angle = (-1 + 2 * torch.rand(n)) * views.rotate * math.pi / 180
    tx = (-1 + 2 * torch.rand(n)) * 2 * views.shift
    ty = (-1 + 2 * torch.rand(n)) * 2 * views.shift
    img = x.double().numpy()
    out = np.zeros_like(img)
    for b in range(n):
        c, s = math.cos(angle[b]) * scale[b].item(), math.sin(angle[b]) * scale[b].item()
        for i in range(h):
            for j in range(w):
                xn, yn = (2 * j + 1) / w - 1, (2 * i + 1) / h - 1
                u = ((c * xn - s * yn + tx[b].item() + 1) * w - 1) / 2  # source column
                v = ((s * xn + c * yn + ty[b].item() + 1) * h - 1) / 2  # source row
                u0, v0 = math.floor(u), math.floor(v)
                for du in (0, 1):
                    for dv in (0, 1):
                        uu, vv = u0 + du, v0 + dv
                        if 0 <= uu < w and 0 <= vv < h:
                            wt = (1 - abs(u - uu)) * (1 - abs(v - vv))
                            out[b, :, i, j] += wt * img[b, :, vv, uu]
    out = torch.from_numpy(out).float()
    if views.noise > 0:
        out = out + views.noise * torch.randn_like(out)
    return out.clamp(0, 1)


@pytest.mark.parametrize("views", [ss.Views(crop=(0.6, 0.9), shift=0.1, rotate=30.0, noise=0.2),
                                   ss.Views(crop=(1.0, 1.0), shift=0.2, rotate=0.0, noise=0.0)])
def test_augment_matches_a_hand_written_affine_warp(views):
    """And draws nothing more (no noise when noise = 0) and warns about nothing."""
    g = torch.Generator().manual_seed(10)
    x = torch.rand(3, 1, 8, 8, generator=g)
    torch.manual_seed(0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ss.augment(x, views)
    after = torch.rand(1)
    torch.manual_seed(0)
    want = reference_augment(x, views)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.equal(torch.rand(1), after)


class _SpyMonitor:
    """Records what pretrain hands it and returns 0.1, 0.2, ..."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, device):
        self.calls.append((model, device))
        return 0.1 * len(self.calls)


def _tiny_pretext(made):
    """A stand-in for make_pretext: a 64 -> 64 linear autoencoder of 1x8x8 images."""

    def make(method, views=ss.DEFAULT_VIEWS, temperature=0.5):
        made.append((method, views, temperature))
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64),
                                  torch.nn.Unflatten(1, (1, 8, 8)))
        return net, ss.AutoEncoderStep()

    return make


def reference_pretrain(images, *, steps, batch_size=256, lr=2e-3, seed=0):
    """Seed torch, build the model, shuffled batches (generator seeded `seed`, the last partial
    batch dropped), about `steps` steps in whole epochs, AdamW(lr, weight decay 1e-4) with a
    cosine schedule over the epochs; per-epoch mean losses."""
    from torch.utils.data import DataLoader

    torch.manual_seed(seed)
    model, step = _tiny_pretext([])("autoencoder")
    loader = DataLoader(TensorDataset(images), batch_size=min(batch_size, len(images)),
                        shuffle=True, generator=torch.Generator().manual_seed(seed),
                        drop_last=True)
    epochs = max(1, round(steps / len(loader)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    losses = []
    for _ in range(epochs):
        total = []
        for (xb,) in loader:
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(xb), xb)
            loss.backward()
            opt.step()
            total.append(loss.item())
        sched.step()
        losses.append(float(np.mean(total)))
    return model.eval(), losses


def _same_weights(a, b):
    return all(torch.allclose(p, q, rtol=1e-5, atol=1e-7)
               for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_pretrain_defaults_match_a_bare_loop(monkeypatch, capsys):
    """260 images: one full batch of 256 a pass (4 dropped), lr 2e-3, seed 0; steps = 1 is
    allowed; the default views and temperature reach the pretext; silent."""
    made = []
    monkeypatch.setattr(pretraining, "make_pretext", _tiny_pretext(made))
    images = torch.rand(260, 1, 8, 8, generator=torch.Generator().manual_seed(11))
    model, history = ss.pretrain("autoencoder", images, CPU, steps=1)
    want, losses = reference_pretrain(images, steps=1)
    assert not model.training and _same_weights(model, want)
    assert history["train_loss"] == pytest.approx(losses, rel=1e-6)
    assert made == [("autoencoder", ss.DEFAULT_VIEWS, 0.5)]
    views = ss.Views(noise=0.0)
    ss.pretrain("simclr", images[:8], CPU, steps=1, views=views, temperature=0.3)
    assert made[-1] == ("simclr", views, 0.3)
    assert capsys.readouterr().err == ""
    ss.pretrain("rotation", images[:8], CPU, steps=1, progress=True)
    assert "rotation" in capsys.readouterr().err  # the bar, when asked for, names the method


def test_pretrain_reports_the_monitor_every_100_steps_in_one_schedule(monkeypatch):
    """3 steps a pass, 100 passes: the monitor reads the model after passes 33, 66, 99 and
    100; the chunks share one optimiser and one cosine schedule (as one run would)."""
    monkeypatch.setattr(pretraining, "make_pretext", _tiny_pretext([]))
    images = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(12))
    monitor = _SpyMonitor()
    model, history = ss.pretrain("autoencoder", images, CPU, steps=300, batch_size=3, lr=0.01,
                                 seed=1, monitor=monitor)
    want, losses = reference_pretrain(images, steps=300, batch_size=3, lr=0.01, seed=1)
    assert _same_weights(model, want)
    assert history["train_loss"] == pytest.approx(losses, rel=1e-5)
    assert history["knn_acc"] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert all(m is model and d == CPU for m, d in monitor.calls)
    few = _SpyMonitor()
    ss.pretrain("autoencoder", images[:9], CPU, steps=6, batch_size=3, monitor=few,
                report_every=1)
    assert len(few.calls) == 2  # every pass when report_every is under one pass


def test_digit_encoder_is_two_strided_conv_bn_relu_blocks_then_fc128():
    """conv32 (3x3, stride 2, no bias) -> BN -> ReLU -> conv64 (same) -> BN -> ReLU ->
    flatten -> linear 128 -> ReLU, recomputed with functional calls (eval mode, running
    statistics made non-trivial); blocks named block1, block2; ten classes by default."""
    fn = torch.nn.functional
    torch.manual_seed(0)
    model = ss.DigitEncoder()
    assert model.block_names == ["block1", "block2"]
    g = torch.Generator().manual_seed(13)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    model.eval()
    x = _digits(3)
    h = x
    with torch.no_grad():
        for width, name in [(32, "block1"), (64, "block2")]:
            conv = [m for m in model.blocks[name] if isinstance(m, torch.nn.Conv2d)][0]
            bn = [m for m in model.blocks[name] if isinstance(m, torch.nn.BatchNorm2d)][0]
            assert conv.weight.shape[0] == width
            h = fn.conv2d(h, conv.weight, None, stride=2, padding=1)
            h = torch.relu(fn.batch_norm(h, bn.running_mean, bn.running_var, bn.weight,
                                         bn.bias, False, 0.0, bn.eps))
        fc = [m for m in model.pool if isinstance(m, torch.nn.Linear)][0]
        want = torch.relu(fc(h.flatten(1)))
        assert want.shape == (3, 128)
        assert torch.allclose(model.features(x), want, atol=1e-5)
        assert model(x).shape == (3, 10)


def test_make_pretext_passes_on_its_settings():
    """SimCLR gets the temperature (0.5 by default); the autoencoder adds no noise, the
    denoising one 0.3 by default; a bare image tensor is a batch too."""
    g = torch.Generator().manual_seed(14)
    z = torch.randn(8, 3, generator=g)
    x = _digits(4)
    ctx = StepContext(CPU, True)
    for kwargs, t in [({}, 0.5), ({"temperature": 0.2}, 0.2)]:
        _, step = ss.make_pretext("simclr", **kwargs)
        assert step(_Fixed(z), (x,), ctx)["loss"].item() == pytest.approx(
            reference_nt_xent(z[:4], z[4:], t), rel=1e-5)
    _, step = ss.make_pretext("autoencoder")
    assert step(torch.nn.Identity(), (x,), ctx)["loss"].item() == 0.0
    for kwargs, noise in [({}, 0.3), ({"noise": 0.1}, 0.1)]:
        _, step = ss.make_pretext("denoising", **kwargs)
        torch.manual_seed(2)
        out = step(torch.nn.Identity(), x, ctx)  # a bare tensor, not an (images,) tuple
        torch.manual_seed(2)
        want = torch.nn.functional.mse_loss((x + noise * torch.randn_like(x)).clamp(0, 1), x)
        assert out["loss"].item() == pytest.approx(want.item(), rel=1e-6) and out["n"] == 4


@pytest.mark.parametrize("turns", [[0, 4], [-1, 2]])
def test_rotate_batch_refuses_turns_outside_0_to_3(turns):
    """Only quarter turns 0..3 are labels; another value would leave its image unwritten."""
    from tl_course.selfsup.losses import rotate_batch

    with pytest.raises(ValueError, match="quarter turns must be 0, 1, 2 or 3"):
        rotate_batch(torch.zeros(2, 1, 4, 4), torch.tensor(turns))
