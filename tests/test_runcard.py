import json
import math

import pytest
import torch

from tl_course import runcard
from tl_course.runcard import RUNCARD_ENV, read, record, record_skip


@pytest.fixture
def card(tmp_path):
    path = tmp_path / "cards" / "nb.metrics.json"
    return path, {RUNCARD_ENV: str(path)}


def test_record_prints_and_returns(capsys):
    assert record("cnn_acc", 0.98765, env={}) == pytest.approx(0.98765)
    assert capsys.readouterr().out.strip() == "recorded cnn_acc = 0.9877"


def test_record_accepts_tensors_and_ints(capsys):
    assert record("n", 3, env={}) == 3.0
    value = record("t", torch.tensor(0.25), env={})
    assert isinstance(value, float) and value == 0.25


def test_record_without_runcard_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record("x", 1.0, env={})
    assert list(tmp_path.iterdir()) == []


def test_record_writes_json(card):
    path, env = card
    record("x_acc", 0.5, env=env)
    assert json.loads(path.read_text()) == {"metrics": {"x_acc": 0.5}}


def test_records_merge_and_overwrite(card):
    path, env = card
    record("a", 1.0, env=env)
    record("b", 2.0, env=env)
    record("a", 3.0, env=env)
    record_skip("imagenet", "offline", env=env)
    data = json.loads(path.read_text())
    assert data["metrics"] == {"a": 3.0, "b": 2.0}
    assert data["skipped"] == [{"section": "imagenet", "reason": "offline"}]
    # Atomic writes leave only the card itself.
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_record_skip_lists_sections(card, capsys):
    path, env = card
    record_skip("imagenet", "no weights offline", env=env)
    record_skip("fine_tune", "smoke profile", env=env)
    out = capsys.readouterr().out
    assert "imagenet" in out and "no weights offline" in out
    assert read(path)["skipped"] == [
        {"section": "imagenet", "reason": "no weights offline"},
        {"section": "fine_tune", "reason": "smoke profile"},
    ]
    assert read(path)["metrics"] == {}


def test_record_uses_os_environ(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    monkeypatch.setenv(RUNCARD_ENV, str(path))
    record("y", 0.25)
    assert read(path)["metrics"] == {"y": 0.25}


def test_read_missing_file(tmp_path):
    assert read(tmp_path / "none.json") == {"metrics": {}, "skipped": [], "claims": [],
                                             "session": {}}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_raise(card, value):
    path, env = card
    with pytest.raises(ValueError, match="finite"):
        record("acc", value, env=env)
    assert not path.exists()


@pytest.mark.parametrize("name", ["test acc", "1st", "acc-top1", "", "a.b"])
def test_non_identifier_names_raise(card, name):
    path, env = card
    with pytest.raises(ValueError, match="identifier"):
        record(name, 0.5, env=env)
    assert not path.exists()


def test_target_is_none_without_env():
    assert runcard.card_path({}) is None
    assert runcard.card_path({RUNCARD_ENV: ""}) is None
