import random
from collections import namedtuple

import numpy as np
import pytest
import torch

from tl_course import device as dev
from tl_course.device import (
    DEVICE_ENV,
    DeviceError,
    amp_dtype,
    autocast,
    environment_summary,
    get_device,
    gpu_info,
    loader_kwargs,
    make_grad_scaler,
    seed_everything,
    to_device,
    versions,
)


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_get_device_cpu():
    assert get_device("cpu", env={}) == torch.device("cpu")
    assert get_device(" CPU ", env={}).type == "cpu"


@pytest.mark.parametrize("name", ["bogus", "gpu0"])
def test_unknown_device(name):
    with pytest.raises(DeviceError, match=name):
        get_device(name, env={})


def test_unsupported_device_type():
    with pytest.raises(DeviceError, match="unsupported"):
        get_device("meta", env={})


def test_cuda_unavailable_says_what_to_do(no_accelerator):
    with pytest.raises(DeviceError) as info:
        get_device("cuda", env={})
    msg = str(info.value)
    assert "CUDA is not available" in msg
    assert DEVICE_ENV in msg and "cpu" in msg  # the fix


def test_mps_unavailable(no_accelerator):
    with pytest.raises(DeviceError, match="MPS"):
        get_device("mps", env={})


def test_env_override():
    assert get_device(env={DEVICE_ENV: "cpu"}).type == "cpu"
    with pytest.raises(DeviceError):
        get_device(env={DEVICE_ENV: "bogus"})


def test_env_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "bogus")
    with pytest.raises(DeviceError):
        get_device()
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert get_device().type == "cpu"


def test_argument_beats_env():
    assert get_device("cpu", env={DEVICE_ENV: "bogus"}).type == "cpu"


def test_auto_choice_without_accelerator(no_accelerator):
    assert get_device(env={}) == torch.device("cpu")


def test_auto_choice_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert get_device(env={}).type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_device(env={}).type == "mps"


def test_cuda_index_checked(fake_cuda):
    assert get_device("cuda", env={}).type == "cuda"
    assert get_device("cuda:0", env={}) == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match="1 GPU"):
        get_device("cuda:1", env={})


def test_seed_everything_repeats_all_generators():
    def draw(gen):
        return (random.random(), np.random.rand(), torch.randn(5), torch.rand(3, generator=gen))

    a = draw(seed_everything(123))
    b = draw(seed_everything(123))
    c = draw(seed_everything(124))
    assert a[0] == b[0] and a[1] == b[1]
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])
    assert not torch.equal(a[2], c[2])
    assert isinstance(seed_everything(0), torch.Generator)


def test_seed_everything_deterministic_flag(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    seed_everything(0)
    assert torch.backends.cudnn.deterministic is False
    seed_everything(0, deterministic=True)
    assert torch.backends.cudnn.deterministic is True
    assert torch.backends.cudnn.benchmark is False


def test_amp_dtype(cpu, monkeypatch):
    assert amp_dtype(cpu) is None
    assert amp_dtype(torch.device("mps")) is None
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype(cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype(cuda) == torch.float16


def test_autocast_on_cpu_is_a_no_op(cpu):
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    lin = torch.nn.Linear(4, 4)
    with autocast(cpu):
        assert (a @ b).dtype == torch.float32
        assert lin(a).dtype == torch.float32
        assert not torch.is_autocast_enabled("cpu")
    with autocast(cpu, enabled=False):
        assert (a @ b).dtype == torch.float32


def test_grad_scaler_off_on_cpu(cpu):
    assert make_grad_scaler(cpu).is_enabled() is False
    assert make_grad_scaler(cpu, enabled=False).is_enabled() is False


def test_loader_kwargs_cpu(cpu):
    kw = loader_kwargs(cpu)
    assert kw["pin_memory"] is False
    assert kw["num_workers"] == 0
    assert "persistent_workers" not in kw


def test_loader_kwargs_explicit_workers(cpu):
    kw = loader_kwargs(cpu, num_workers=2)
    assert kw["num_workers"] == 2 and kw["persistent_workers"] is True


def test_loader_kwargs_cuda(monkeypatch):
    monkeypatch.setattr(dev.sys, "platform", "linux")
    kw = loader_kwargs(torch.device("cuda"))
    assert kw["pin_memory"] is True
    assert 1 <= kw["num_workers"] <= 4
    # Workers start by spawn on macOS and Windows, which breaks inside notebooks.
    for platform in ("darwin", "win32"):
        monkeypatch.setattr(dev.sys, "platform", platform)
        assert loader_kwargs(torch.device("cuda"))["num_workers"] == 0


def test_to_device_nested(cpu):
    t1, t2 = torch.ones(2), torch.zeros(3)
    batch = {"a": [t1, (t2, 3)], "b": "text"}
    out = to_device(batch, cpu)
    assert isinstance(out, dict) and set(out) == {"a", "b"}
    assert isinstance(out["a"], list) and isinstance(out["a"][1], tuple)
    assert torch.equal(out["a"][0], t1) and out["a"][0].device == cpu
    assert torch.equal(out["a"][1][0], t2)
    assert out["a"][1][1] == 3 and out["b"] == "text"


def test_to_device_moves_dtype_preserving_tensor(cpu):
    x = torch.arange(5)
    assert to_device(x, cpu).dtype == torch.int64


def test_to_device_keeps_namedtuples(cpu):
    # DataLoader's default collate keeps namedtuple batches, so to_device must too.
    Batch = namedtuple("Batch", ["x", "y"])
    out = to_device(Batch(torch.ones(2), torch.zeros(2)), cpu)
    assert isinstance(out, Batch)
    assert torch.equal(out.x, torch.ones(2)) and torch.equal(out.y, torch.zeros(2))


def test_gpu_info_and_versions(cpu):
    assert gpu_info(cpu) == {}
    v = versions()
    assert {"python", "torch", "torchvision", "numpy"} <= set(v)
    assert v["torch"] == torch.__version__


def test_environment_summary(cpu):
    line = environment_summary(cpu, "smoke")
    assert line.startswith("profile=smoke")
    assert "device=cpu" in line and f"torch={torch.__version__}" in line
    assert "\n" not in line
    assert "profile=" not in environment_summary(cpu)
