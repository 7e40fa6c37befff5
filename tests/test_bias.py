"""tl_course.bias: the pasted cue, the cued source, the flip report counted by hand, and
the frozen probe's shortcut (and its removal by cue augmentation)."""

from __future__ import annotations

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
