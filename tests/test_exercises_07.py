"""Notebook 07's exercise checks: right answers pass, each typical mistake gets its hint."""

from __future__ import annotations

import torch

from tl_course import exercises as ex
from tl_course.bias import paste_cue


def good_h_score(f, y):
    f = f.double() - f.double().mean(0)
    classes = torch.unique(y)
    means = torch.stack([f[y == c].mean(0) for c in classes])[torch.searchsorted(classes, y)]
    return float(torch.trace(torch.linalg.pinv(f.T @ f / len(f)) @ (means.T @ means / len(f))))


def test_h_score_correct(capsys):
    assert ex.check_h_score(good_h_score)
    assert "[correct]" in capsys.readouterr().out


def test_h_score_with_unbiased_covariances_is_the_same_score(capsys):
    """Dividing both covariances by n - 1 instead of n cancels in the trace: accepted."""
    def unbiased(f, y):
        f = f.double() - f.double().mean(0)
        classes = torch.unique(y)
        g = torch.stack([f[y == c].mean(0) for c in classes])[torch.searchsorted(classes, y)]
        return float(torch.trace(torch.linalg.pinv(torch.cov(f.T)) @ torch.cov(g.T)))

    assert ex.check_h_score(unbiased)


def test_h_score_without_centring_gets_its_hint(capsys):
    def uncentred(f, y):
        classes = torch.unique(y)
        g = torch.stack([f[y == c].mean(0) for c in classes])[torch.searchsorted(classes, y)]
        return float(torch.trace(torch.linalg.pinv(f.T @ f) @ (g.T @ g)))

    assert not ex.check_h_score(uncentred)
    assert "centre the features" in capsys.readouterr().out


def test_h_score_wrong_formula_and_crash_give_feedback(capsys):
    assert not ex.check_h_score(lambda f, y: float(torch.trace(torch.cov(f.T))))
    assert "[not yet]" in capsys.readouterr().out
    assert not ex.check_h_score(lambda f, y: 1 / 0)
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_h_score_not_attempted(capsys):
    assert not ex.check_h_score(...)
    assert "[todo]" in capsys.readouterr().out


def _setup():
    """A predictor that answers 3 whenever the top-left pixel is bright, else the answer
    hidden in the image's centre pixel (right for all but the first 8 images)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(40, 1, 28, 28, generator=gen) * 0.5
    labels = torch.arange(40) % 5
    guess = labels.clone()
    guess[:8] = (labels[:8] + 1) % 5  # a few wrong answers, so errors and flips differ
    images[:, 0, 14, 14] = guess.float() / 10

    def predict(x):
        guess = (x[:, 0, 14, 14] * 10).round().long()
        return torch.where(x[:, 0, 2, 2] > 0.9, torch.tensor(3), guess)

    return predict, images, labels


def test_flip_rate_correct_and_its_usual_slips(capsys):
    predict, images, labels = _setup()
    flips = float((predict(images) != predict(paste_cue(images))).float().mean())
    assert 0 < flips < 1
    assert ex.check_flip_rate(flips, predict, images, labels, 5)
    assert "[correct]" in capsys.readouterr().out
    error_rate = float((predict(paste_cue(images)) != labels).float().mean())
    assert not ex.check_flip_rate(error_rate, predict, images, labels, 5)
    assert "error rate" in capsys.readouterr().out
    assert not ex.check_flip_rate(flips * len(images), predict, images, labels, 5)
    assert "count" in capsys.readouterr().out
    assert not ex.check_flip_rate(..., predict, images, labels, 5)
