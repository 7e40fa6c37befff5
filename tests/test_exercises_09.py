"""Notebook 09's exercise checks: right answers pass, each typical mistake gets its hint."""

from __future__ import annotations

import numpy as np

from tl_course import exercises as ex


def good_balanced(y, p):
    return float(np.mean([np.mean(p[y == c] == c) for c in np.unique(y)]))


def test_balanced_accuracy_correct(capsys):
    assert ex.check_balanced_accuracy(good_balanced)
    assert "[correct]" in capsys.readouterr().out


def test_balanced_accuracy_slips_get_their_hints(capsys):
    assert not ex.check_balanced_accuracy(lambda y, p: float(np.mean(y == p)))
    assert "plain accuracy" in capsys.readouterr().out
    precision = lambda y, p: float(np.mean([np.mean(y[p == c] == c) for c in np.unique(y)
                                            if np.any(p == c)]))
    assert not ex.check_balanced_accuracy(precision)
    assert "precision" in capsys.readouterr().out
    assert not ex.check_balanced_accuracy(lambda y, p: 1 / 0)
    assert "ZeroDivisionError" in capsys.readouterr().out
    assert not ex.check_balanced_accuracy(...)
    assert "[todo]" in capsys.readouterr().out


def _s(w, a, b, cosine=True):
    if cosine:
        w = w / np.linalg.norm(w, axis=1, keepdims=True)
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (w @ a.T).mean(1) - (w @ b.T).mean(1)


def weat_d(x, y, a, b, ddof=1, cosine=True):
    sx, sy = _s(x, a, b, cosine), _s(y, a, b, cosine)
    return float((sx.mean() - sy.mean()) / np.concatenate([sx, sy]).std(ddof=ddof))


def test_weat_correct(capsys):
    assert ex.check_weat_effect_size(weat_d)
    assert "[correct]" in capsys.readouterr().out


def test_weat_slips_get_their_hints(capsys):
    assert not ex.check_weat_effect_size(lambda x, y, a, b: weat_d(x, y, a, b, ddof=0))
    assert "ddof=1" in capsys.readouterr().out
    assert not ex.check_weat_effect_size(lambda x, y, a, b: weat_d(y, x, a, b))
    assert "sign is flipped" in capsys.readouterr().out
    assert not ex.check_weat_effect_size(lambda x, y, a, b: weat_d(x, y, a, b, cosine=False))
    assert "cosine" in capsys.readouterr().out
    assert not ex.check_weat_effect_size(lambda x, y, a, b: 1.0)
    assert "expected" in capsys.readouterr().out
