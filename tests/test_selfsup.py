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
