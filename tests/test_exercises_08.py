"""Notebook 08's exercise checks: right answers pass, each typical mistake gets its hint."""

from __future__ import annotations

from tl_course import exercises as ex

COUNTS = {"a": 30, "b": 10, "c": 20}


def test_majority_share_correct_and_its_slips(capsys):
    assert ex.check_majority_share(0.5, COUNTS)
    assert "[correct]" in capsys.readouterr().out
    assert not ex.check_majority_share(1 / 3, COUNTS)
    assert "same size" in capsys.readouterr().out
    assert not ex.check_majority_share(30, COUNTS)
    assert "count" in capsys.readouterr().out
    assert not ex.check_majority_share(0.25, COUNTS)
    assert "expected 0.500" in capsys.readouterr().out
    assert not ex.check_majority_share("half", COUNTS)
    assert "ValueError" in capsys.readouterr().out
    assert not ex.check_majority_share(..., COUNTS)


def test_weakest_class(capsys):
    per_class = {"a": 0.9, "b": 0.4, "c": 0.7}
    assert ex.check_weakest_class("b", per_class)
    assert "[correct]" in capsys.readouterr().out
    assert not ex.check_weakest_class("c", per_class)
    assert "another class" in capsys.readouterr().out
    assert not ex.check_weakest_class("z", per_class)
    assert "answer with one of" in capsys.readouterr().out
    assert not ex.check_weakest_class(None, per_class)
