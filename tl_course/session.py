"""The first code cell of every notebook: profile, device, seed, and a one-line summary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .device import environment_summary, get_device, in_colab, seed_everything
from .profile import Profile, get_profile

COLAB_NO_GPU = (
    "WARNING: this Colab runtime has no GPU. Runtime > Change runtime type > "
    "Hardware accelerator: T4 GPU, then run the notebook again (it still works on CPU, slowly)."
)


@dataclass(frozen=True)
class Session:
    """What a notebook passes around explicitly: profile, device and seed."""

    profile: Profile
    device: torch.device
    seed: int


def start(
    notebook: str,
    seed: int = 0,
    profile: str | None = None,
    device: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Session:
    """Resolve profile and device, seed everything, print one summary line; return a Session.

    `notebook` is the module number ("01") used to look up the estimated time.
    """
    prof = get_profile(profile, env)
    dev = get_device(device, env)
    seed_everything(seed)
    minutes = prof.minutes.get(notebook)
    eta = f" | estimated time ~{minutes:g} min" if minutes is not None else ""
    print(f"tl-course {notebook} | {environment_summary(dev, prof.name)}{eta}")
    if in_colab() and dev.type != "cuda":
        print(COLAB_NO_GPU)
    elif prof.name == "gpu" and dev.type != "cuda":
        print(f"note: the gpu profile is running on {dev}; expect it to be slow.")
    return Session(prof, dev, seed)
