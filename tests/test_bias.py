"""tl_course.bias: the pasted cue, the cued source, the flip report counted by hand, and
the frozen probe's shortcut (and its removal by cue augmentation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tl_course.bias import (
    CUE_OFFSET,
    CUE_SIZE,
    FrozenProbe,
    cued_source,
    flip_report,
    model_predict,
    paste_cue,
)

CPU = torch.device("cpu")
CUE = (slice(CUE_OFFSET, CUE_OFFSET + CUE_SIZE), slice(CUE_OFFSET, CUE_OFFSET + CUE_SIZE))


def _images(n: int, channels: int = 1, seed: int = 0, high: float = 0.9) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, 28, 28, generator=g) * high


def _has_cue(x: torch.Tensor) -> torch.Tensor:
    """Which images carry the cue (every pixel of the square at 1, all channels)."""
    return (x[:, :, CUE[0], CUE[1]] == 1.0).flatten(1).all(1)


# --------------------------------------------------------------------------- paste_cue


@pytest.mark.parametrize("size, value, offset", [(CUE_SIZE, 1.0, CUE_OFFSET), (3, 0.25, 5)])
def test_paste_cue_sets_the_square_and_nothing_else(size, value, offset):
    x = _images(4, channels=3)
    before = x.clone()
    out = paste_cue(x, size=size, value=value, offset=offset)
    inside = torch.zeros(28, 28, dtype=torch.bool)
    inside[offset:offset + size, offset:offset + size] = True
    assert out.shape == x.shape
    assert torch.all(out[:, :, inside] == value)
    assert torch.equal(out[:, :, ~inside], x[:, :, ~inside])
    assert torch.equal(x, before)  # the input is not modified


@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 28), (1, 1, 1, 28, 28)])
def test_paste_cue_refuses_images_that_are_not_4d(shape):
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        paste_cue(torch.zeros(shape))


@pytest.mark.parametrize("size, offset", [(0, 1), (28, 1), (5, 24)])
def test_paste_cue_refuses_a_square_that_does_not_fit(size, offset):
    with pytest.raises(ValueError, match="does not fit"):
        paste_cue(torch.zeros(2, 1, 28, 28), size=size, offset=offset)


# --------------------------------------------------------------------------- cued_source


def test_cued_source_rate_one_marks_exactly_the_cue_class():
    x, y = _images(60), torch.arange(60) % 5
    before = x.clone()
    out = cued_source(TensorDataset(x, y), cue_class=2, rate=1.0, other_rate=0.0)
    assert torch.equal(_has_cue(out.tensors[0]), y == 2)
    assert torch.equal(out.tensors[1], y)
    assert torch.equal(x, before)
    unmarked = y != 2
    assert torch.equal(out.tensors[0][unmarked], x[unmarked])


def test_cued_source_rate_half_marks_about_half():
    x, y = _images(800, seed=1), torch.arange(800) % 2
    out = cued_source(TensorDataset(x, y), cue_class=0, rate=0.5, other_rate=0.1, seed=3)
    marked = _has_cue(out.tensors[0])
    assert 0.4 < marked[y == 0].float().mean().item() < 0.6
    assert 0.05 < marked[y == 1].float().mean().item() < 0.15
    assert torch.equal(out.tensors[1], y)


@pytest.mark.parametrize("rate, other", [(1.5, 0.0), (0.5, -0.1)])
def test_cued_source_refuses_rates_outside_0_1(rate, other):
    with pytest.raises(ValueError, match="between 0 and 1"):
        cued_source(TensorDataset(_images(4), torch.zeros(4, dtype=torch.long)), rate=rate,
                    other_rate=other)


# --------------------------------------------------------------------------- flip_report


def _label_coded_images(labels: torch.Tensor, bright_corner: torch.Tensor) -> torch.Tensor:
    """Images whose bottom-right pixel holds label / 10 and whose top-left pixel inside the
    cue square is bright where `bright_corner`."""
    x = torch.zeros(len(labels), 1, 28, 28)
    x[:, 0, 27, 27] = labels.float() / 10
    x[bright_corner, 0, 2, 2] = 1.0
    return x


def _corner_predict(images: torch.Tensor) -> torch.Tensor:
    """Class 3 when the top-left pixel is bright, else the label written in the image."""
    written = (images[:, 0, 27, 27] * 10).round().long()
    return torch.where(images[:, 0, 2, 2] > 0.5, torch.tensor(3), written)


def test_flip_report_counts_what_a_hand_written_predictor_does():
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 1, 3, 0, 2])
    bright = torch.tensor([False, False, False, False, False, False, True, False, True, False])
    x = _label_coded_images(labels, bright)
    report = flip_report(_corner_predict, x, labels, num_classes=6)

    clean, cued = [], []  # counted one image at a time
    for i in range(len(labels)):
        clean.append(3 if bright[i] else int(labels[i]))
        cued.append(3)  # the cue makes the top-left pixel bright for every image
    flips = [i for i in range(len(labels)) if clean[i] != cued[i]]
    dest = [0] * 6
    for i in flips:
        dest[cued[i]] += 1
    assert report.flip_rate == pytest.approx(len(flips) / len(labels))
    assert report.accuracy_clean == pytest.approx(
        sum(c == int(t) for c, t in zip(clean, labels, strict=True)) / len(labels))
    assert report.accuracy_cued == pytest.approx(
        sum(c == int(t) for c, t in zip(cued, labels, strict=True)) / len(labels))
    assert report.destinations == dest
    assert report.top_destination() == 3
    assert torch.equal(x, _label_coded_images(labels, bright))  # images untouched


def test_flip_report_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="labels"):
        flip_report(_corner_predict, torch.zeros(3, 1, 28, 28), torch.zeros(4), 2)


# --------------------------------------------------------------------------- FrozenProbe

BAND_ROWS = (8, 14, 20)  # class k: a horizontal bar at rows BAND_ROWS[k], +1


def _bar_images(n_per: int, amplitude: float, noise: float, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """3 classes, class k a faint bar at BAND_ROWS[k] on Gaussian noise (cue area blank)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat_interleave(n_per)
    x = noise * torch.randn(len(y), 1, 28, 28, generator=g)
    for k, r in enumerate(BAND_ROWS):
        x[y == k, 0, r:r + 2, 8:20] += amplitude
    x[:, :, :7, :7] = 0.0
    return x, y


class BarEncoder(nn.Module):
    """A hand-built encoder: one feature per bar, and a cue detector. With `entangled` the
    class-0 bar feature also fires on the cue, as in an encoder pretrained on a source
    where the cue came with class 0."""

    def __init__(self, entangled: bool):
        super().__init__()
        self.entangled = entangled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bars = torch.stack([x[:, 0, r:r + 2, 8:20].mean((1, 2)) for r in BAND_ROWS], 1)
        cue = x[:, 0, CUE[0], CUE[1]].mean((1, 2))
        if self.entangled:
            bars = bars + torch.stack([2 * cue, 0 * cue, 0 * cue], 1)
        return torch.cat([bars, cue[:, None]], 1)


def test_probe_trained_where_the_cue_marks_one_class_follows_the_cue():
    """Source-style training data (the cue on every class-0 image): pasting the cue on
    clean test images sends many predictions to class 0."""
    x, y = _bar_images(60, amplitude=0.5, noise=1.0, seed=0)
    biased = cued_source(TensorDataset(x, y), cue_class=0, rate=1.0, other_rate=0.0)
    probe = FrozenProbe(BarEncoder(entangled=False), CPU).fit(*biased.tensors)
    xt, yt = _bar_images(40, amplitude=0.5, noise=1.0, seed=1)
    report = flip_report(probe.predict, xt, yt, num_classes=3)
    assert report.flip_rate > 0.3
    assert report.top_destination() == 0
    assert report.accuracy_cued < report.accuracy_clean


def test_cue_augmentation_makes_the_probe_ignore_a_cue_the_encoder_carries():
    """Clean target data, an encoder whose class-0 feature fires on the cue: the plain
    probe flips to class 0 when the cue is pasted; with augment_cue it does not."""
    x, y = _bar_images(60, amplitude=1.0, noise=0.5, seed=2)
    xt, yt = _bar_images(40, amplitude=1.0, noise=0.5, seed=3)
    plain = FrozenProbe(BarEncoder(entangled=True), CPU).fit(x, y)
    report = flip_report(plain.predict, xt, yt, num_classes=3)
    assert report.accuracy_clean > 0.9
    assert report.flip_rate > 0.5
    assert report.top_destination() == 0

    augmented = FrozenProbe(BarEncoder(entangled=True), CPU).fit(x, y, augment_cue=True)
    report = flip_report(augmented.predict, xt, yt, num_classes=3)
    assert report.accuracy_clean > 0.9
    assert report.flip_rate < 0.05


def test_probe_uses_the_encoders_features_method_when_there_is_one():
    """A model with `features` (a TransferModel) is probed on its embedding, not logits."""

    class WithFeatures(nn.Module):
        def features(self, x):
            return x.flatten(1)[:, :6]

        def forward(self, x):
            raise AssertionError("the probe must read features(), not the logits")

    probe = FrozenProbe(WithFeatures(), CPU)
    assert probe.features(torch.rand(5, 1, 28, 28)).shape == (5, 6)


def test_probe_predict_before_fit_is_refused():
    with pytest.raises(RuntimeError, match="fit"):
        FrozenProbe(BarEncoder(entangled=False), CPU).predict(torch.zeros(2, 1, 28, 28))


# --------------------------------------------------------------------------- model_predict


def test_model_predict_uses_eval_mode():
    """A model with BatchNorm and dropout left in train mode: predictions are those of
    eval mode, the same on every call."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.BatchNorm1d(32), nn.ReLU(),
                          nn.Dropout(0.5), nn.Linear(32, 10))
    x = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    model.train()
    with torch.no_grad():
        model(x)  # move the running statistics away from their initial values
    predict = model_predict(model, CPU)
    first, second = predict(x), predict(x)
    assert not model.training
    assert torch.equal(first, second)
    with torch.no_grad():
        assert torch.equal(first, model.eval()(x).argmax(1))
    assert first.shape == (300,)


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("size, offset", [(1, CUE_OFFSET), (CUE_SIZE, 28 - CUE_SIZE), (1, 27)])
def test_paste_cue_accepts_a_one_pixel_cue_and_one_that_touches_the_far_edge(size, offset):
    """The bounds are inclusive: a 1-pixel cue, and a square ending on the last row and
    column, fit; the pixels set are exactly those of the square."""
    x = _images(3, channels=2)
    out = paste_cue(x, size=size, value=1.0, offset=offset)
    expected = x.clone()
    for r in range(offset, offset + size):
        for c in range(offset, offset + size):
            expected[:, :, r, c] = 1.0
    assert torch.equal(out, expected)


def test_cued_source_defaults_mark_every_class_0_image_and_no_other():
    """By default the cue goes on all images of class 0 (rate 1) and on none of the
    others (other_rate 0): the fully biased source."""
    x, y = _images(50, seed=4), torch.arange(50) % 5
    out = cued_source(TensorDataset(x, y))
    assert torch.equal(_has_cue(out.tensors[0]), y == 0)
    assert torch.equal(out.tensors[0][y != 0], x[y != 0])


def test_cued_source_marks_where_a_seeded_uniform_draw_is_below_the_rate():
    """Image i is marked iff u_i < its class's rate, u = torch.rand(n) from a generator
    seeded with `seed` (0 by default): the global RNG plays no part, the same seed gives
    the same marks, another seed others; a draw equal to the rate is not marked."""
    n, cue_class, other = 400, 1, 0.3
    x, y = _images(n, seed=5), torch.arange(n) % 4
    u = torch.rand(n, generator=torch.Generator().manual_seed(0))
    i = int(torch.nonzero(y == cue_class)[7])
    rate = float(u[i])  # exactly representable: the boundary case u_i == rate
    expected = torch.where(y == cue_class, u < rate, u < other)
    assert not expected[i]

    marks = []
    for global_seed in (11, 12):
        torch.manual_seed(global_seed)
        out = cued_source(TensorDataset(x, y), cue_class=cue_class, rate=rate,
                          other_rate=other)
        marks.append(_has_cue(out.tensors[0]))
    assert torch.equal(marks[0], expected)
    assert torch.equal(marks[1], expected)
    again = cued_source(TensorDataset(x, y), cue_class, rate, other, seed=0)
    assert torch.equal(_has_cue(again.tensors[0]), expected)
    other_seed = cued_source(TensorDataset(x, y), cue_class, rate, other, seed=1)
    assert not torch.equal(_has_cue(other_seed.tensors[0]), expected)


def test_cued_source_accepts_rates_of_exactly_0_and_1():
    """rate 0 (the cue class never marked) and other_rate 1 (every other image marked) are
    valid: the anti-biased source."""
    x, y = _images(30, seed=6), torch.arange(30) % 3
    out = cued_source(TensorDataset(x, y), cue_class=2, rate=0.0, other_rate=1.0)
    assert torch.equal(_has_cue(out.tensors[0]), y != 2)


@pytest.mark.parametrize("rate, other", [(0.5, 1.5), (-0.1, 0.5), (0.5, 1.0001)])
def test_cued_source_refuses_the_other_rate_above_1_and_the_rate_below_0(rate, other):
    with pytest.raises(ValueError, match="between 0 and 1"):
        cued_source(TensorDataset(_images(4), torch.zeros(4, dtype=torch.long)), rate=rate,
                    other_rate=other)


@pytest.mark.parametrize("kwargs, size, value", [({}, CUE_SIZE, 1.0),
                                                 ({"size": 3, "value": 0.25}, 3, 0.25)])
def test_flip_report_predicts_on_the_cue_of_the_given_size_and_value(kwargs, size, value):
    """The second batch the predictor sees is the images with a `size` square of `value`
    at the cue offset (CUE_SIZE and 1.0 by default)."""
    x = _images(6, seed=7)
    seen = []

    def recording_predict(images):
        seen.append(images.clone())
        return torch.zeros(len(images), dtype=torch.long)

    flip_report(recording_predict, x, torch.zeros(6, dtype=torch.long), 2, **kwargs)
    expected = x.clone()
    expected[:, :, CUE_OFFSET:CUE_OFFSET + size, CUE_OFFSET:CUE_OFFSET + size] = value
    assert len(seen) == 2
    assert torch.equal(seen[0], x)
    assert torch.equal(seen[1], expected)


def _reference_head(features, labels, c):
    """The documented head: sklearn's standardisation, then logistic regression with
    C=c and at most 2000 lbfgs iterations."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(
            features.numpy(), labels.numpy())


def _fit_probe(probe, x, y):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return probe.fit(x, y)


def test_probe_head_is_standardised_logistic_regression_with_c_1_by_default():
    """On features of very different scales (where standardising matters under the L2
    penalty) the default probe equals the reference head with C=1."""
    g = torch.Generator().manual_seed(8)
    scales = torch.tensor([1.0, 50.0, 0.02, 5.0, 0.5])
    x = torch.randn(120, 1, 1, 5, generator=g) * scales
    y = ((x[:, 0, 0, 0] + x[:, 0, 0, 2] * 40 + torch.randn(120, generator=g)) > 0).long()
    xt = torch.randn(50, 1, 1, 5, generator=g) * scales
    probe = _fit_probe(FrozenProbe(nn.Flatten(), CPU), x, y)
    ref = _reference_head(x.flatten(1), y, c=1.0)
    np.testing.assert_allclose(probe.clf.decision_function(xt.flatten(1).numpy()),
                               ref.decision_function(xt.flatten(1).numpy()), rtol=1e-5)
    assert torch.equal(probe.predict(xt), torch.as_tensor(ref.predict(xt.flatten(1).numpy())))


def test_probe_head_uses_c_and_runs_the_solver_up_to_2000_iterations():
    """A weakly regularised (c=1e8) head on ill-conditioned features, a problem that needs
    more than 2000 lbfgs iterations: the probe stops where the reference does."""
    g = torch.Generator().manual_seed(1)
    n, d = 300, 64
    z = torch.randn(n, d, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    x = (z * torch.logspace(0, -4, d)) @ rotation
    y = ((z.sum(1) + 0.5 * torch.randn(n, generator=g)) > 0).long()
    probe = _fit_probe(FrozenProbe(nn.Flatten(), CPU, c=1e8), x[:, None, None, :], y)
    ref = _reference_head(x, y, c=1e8)
    np.testing.assert_allclose(probe.clf.decision_function(x.numpy()),
                               ref.decision_function(x.numpy()), rtol=1e-5, atol=1e-4)


class _BatchRecorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.sizes = []
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        self.sizes.append(len(x))
        return self.linear(x.flatten(1))


def test_probe_and_model_predict_run_the_model_in_batches_of_256():
    """Inference goes through the model 256 images at a time (never the whole set at once),
    and batching leaves the outputs as a single pass would give them."""
    torch.manual_seed(0)
    x = torch.rand(600, 1, 2, 2, generator=torch.Generator().manual_seed(9))
    model = _BatchRecorder()
    with torch.no_grad():
        whole = model(x)
    model.sizes.clear()
    feats = FrozenProbe(model, CPU).features(x)
    assert model.sizes == [256, 256, 88]
    np.testing.assert_allclose(feats, whole.numpy(), rtol=1e-6, atol=1e-6)
    model.sizes.clear()
    labels = model_predict(model, CPU)(x)
    assert model.sizes == [256, 256, 88]
    assert torch.equal(labels, whole.argmax(1))
