"""Device choice, seeding, mixed precision and DataLoader settings.

Everything CUDA-specific here is a no-op on CPU, so the same notebook code runs
on a laptop, on Apple silicon and on a Colab GPU.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

DEVICE_ENV = "TL_COURSE_DEVICE"
_KNOWN_TYPES = ("cpu", "cuda", "mps")


class DeviceError(ValueError):
    """An unknown or unavailable device was asked for."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def get_device(name: str | None = None, env: Mapping[str, str] | None = None) -> torch.device:
    """Pick the device: `name`, else `TL_COURSE_DEVICE`, else CUDA, then MPS, then CPU.

    Raises DeviceError when the requested device is unknown or not available here.
    """
    env = os.environ if env is None else env
    if name is None:
        name = env.get(DEVICE_ENV) or None
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name.strip().lower())
    except RuntimeError:
        raise DeviceError(
            f"unknown device {name!r}; use one of {', '.join(_KNOWN_TYPES)} "
            f"(e.g. cuda:1), or unset {DEVICE_ENV}"
        ) from None
    if device.type not in _KNOWN_TYPES:
        raise DeviceError(f"unsupported device {name!r}; use one of {', '.join(_KNOWN_TYPES)}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r} asked for, but CUDA is not available here; "
                f"unset {DEVICE_ENV} or set it to cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist"
            )
    if device.type == "mps" and not _mps_available():
        raise DeviceError(f"device {name!r} asked for, but MPS is not available here; use cpu")
    return device


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU generator seeded the same.

    `deterministic=True` also asks cuDNN for deterministic kernels (slower on GPU).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA and MPS too
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype for `device`: bf16 where supported, else fp16; None on CPU/MPS."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA; a do-nothing context elsewhere."""
    dtype = amp_dtype(device)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def make_grad_scaler(device: torch.device, enabled: bool = True) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 on CUDA (bf16 and CPU need no scaling)."""
    active = enabled and amp_dtype(device) == torch.float16
    return torch.amp.GradScaler("cuda", enabled=active)


def loader_kwargs(device: torch.device, num_workers: int | None = None) -> dict[str, Any]:
    """DataLoader settings for `device`: pinned memory on CUDA, workers where they are safe.

    Workers are 0 on macOS / Windows and inside notebooks on those platforms, where
    multiprocessing with spawn is fragile; on Linux with CUDA a few workers help.
    """
    if num_workers is None:
        fragile = sys.platform in ("darwin", "win32")
        num_workers = 0 if (fragile or device.type != "cuda") else min(4, os.cpu_count() or 1)
    kwargs: dict[str, Any] = {"num_workers": num_workers, "pin_memory": device.type == "cuda"}
    if num_workers > 0:
        kwargs["persistent_workers"] = True
    return kwargs


def to_device(obj: Any, device: torch.device) -> Any:
    """Move a tensor, or tensors nested in tuples / lists / dicts, to `device` (non-blocking)."""
    if isinstance(obj, torch.Tensor):
        # non_blocking only overlaps with compute when the source is pinned (CUDA loaders).
        return obj.to(device, non_blocking=device.type == "cuda")
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def gpu_info(device: torch.device) -> dict[str, Any]:
    """Name and memory of the GPU behind `device`; empty for CPU / MPS."""
    if device.type != "cuda":
        return {}
    props = torch.cuda.get_device_properties(device)
    return {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 2**30, 1)}


def versions() -> dict[str, str]:
    """Versions that matter for reproducing a run."""
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
    }


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    return "google.colab" in sys.modules


def environment_summary(device: torch.device, profile_name: str | None = None) -> str:
    """One line: device (and GPU name / memory), torch / torchvision versions, profile."""
    info = gpu_info(device)
    where = str(device)
    if info:
        where += f" ({info['gpu']}, {info['gpu_memory_gb']} GB)"
    v = versions()
    parts = [f"device={where}", f"torch={v['torch']}", f"torchvision={v['torchvision']}"]
    if profile_name:
        parts.insert(0, f"profile={profile_name}")
    return " | ".join(parts)
