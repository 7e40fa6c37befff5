"""Notebook 06's exercise checks: right answers pass, each typical mistake gets its hint."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tl_course import exercises as ex


def good_nt_xent(z1, z2, t):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    logits = (z @ z.T / t).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    return F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))


def test_nt_xent_correct(capsys):
    assert ex.check_nt_xent(good_nt_xent)
    assert "[correct]" in capsys.readouterr().out


def test_nt_xent_without_masking_the_diagonal(capsys):
    def unmasked(z1, z2, t):
        z = F.normalize(torch.cat([z1, z2]), dim=1)
        n = len(z1)
        return F.cross_entropy(z @ z.T / t, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))

    assert not ex.check_nt_xent(unmasked)
    assert "mask the diagonal" in capsys.readouterr().out


def test_nt_xent_without_normalising(capsys):
    def dot_products(z1, z2, t):
        z = torch.cat([z1, z2])
        n = len(z1)
        logits = (z @ z.T / t).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
        return F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))

    assert not ex.check_nt_xent(dot_products)
    assert "normalise each embedding" in capsys.readouterr().out


def test_nt_xent_placeholder_and_raising_code(capsys):
    assert not ex.check_nt_xent(...)
    assert "[todo]" in capsys.readouterr().out
    assert not ex.check_nt_xent(lambda z1, z2, t: 1 / 0)
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_rotation_pair(capsys):
    assert ex.check_rotation_pair((9, 6))
    assert not ex.check_rotation_pair((1, 7))
    assert "upside down" in capsys.readouterr().out
    assert not ex.check_rotation_pair("six")
    assert "two digits" in capsys.readouterr().out


def test_most_needed_view(capsys):
    drops = {"crop": 0.80, "shift": 0.88, "rotate": 0.90, "noise": 0.91}
    assert ex.check_most_needed_view("crop", drops)
    assert not ex.check_most_needed_view("noise", drops)
    assert "another removal cost more" in capsys.readouterr().out
    assert not ex.check_most_needed_view("blur", drops)
    assert "one of" in capsys.readouterr().out
