import sys

import pytest
import torch

from tl_course.device import DEVICE_ENV, DeviceError
from tl_course.profile import PROFILE_ENV, PROFILES, ProfileError
from tl_course.session import COLAB_NO_GPU, Session, start


def test_start_returns_session_and_prints_one_line(capsys):
    s = start("01", profile="smoke", device="cpu")
    assert isinstance(s, Session)
    assert s.profile is PROFILES["smoke"] and s.device == torch.device("cpu") and s.seed == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("tl-course 01")
    assert "profile=smoke" in line and "device=cpu" in line
    assert f"estimated time ~{PROFILES['smoke'].minutes['01']:g} min" in line


def test_start_seeds(capsys):
    start("01", seed=5, profile="smoke", device="cpu")
    a = torch.randn(4)
    start("01", seed=5, profile="smoke", device="cpu")
    b = torch.randn(4)
    start("01", seed=6, profile="smoke", device="cpu")
    c = torch.randn(4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_start_reads_env_mapping(capsys):
    s = start("02", env={PROFILE_ENV: "cpu", DEVICE_ENV: "cpu"})
    assert s.profile.name == "cpu" and s.device.type == "cpu"
    assert "profile=cpu" in capsys.readouterr().out


def test_start_without_time_estimate(capsys):
    start("99", profile="smoke", device="cpu")
    out = capsys.readouterr().out
    assert "estimated time" not in out and "tl-course 99" in out


def test_gpu_profile_on_cpu_warns(capsys):
    start("01", profile="gpu", device="cpu")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "slow" in lines[1]


def test_colab_without_gpu_says_how_to_get_one(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", object())
    start("01", profile="cpu", device="cpu")
    out = capsys.readouterr().out
    assert COLAB_NO_GPU in out and "T4 GPU" in out


def test_start_bad_profile_or_device():
    with pytest.raises(ProfileError):
        start("01", profile="bogus", device="cpu")
    with pytest.raises(DeviceError):
        start("01", profile="smoke", device="bogus")


def test_session_is_frozen():
    s = Session(PROFILES["smoke"], torch.device("cpu"), 0)
    with pytest.raises(AttributeError):
        s.seed = 1  # type: ignore[misc]
