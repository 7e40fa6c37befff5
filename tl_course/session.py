"""The first code cell of every notebook: profile, device, seed, and a one-line summary."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .claims import claim
from .device import environment_summary, get_device, in_colab, seed_everything
from .profile import Profile, get_profile
from .runcard import card_path, merge_into_card

SEED_ENV = "TL_COURSE_SEED"

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

    def claim(self, name: str, text: str, condition: str, *, margin: float = 0.0,
              why: str = "", **numbers: float) -> bool:
        """`tlc.claim` for this session's profile (smoke claims never fail)."""
        return claim(name, text, condition, margin=margin, why=why,
                     profile=self.profile.name, **numbers)


def session_seed(seed: int | None = None, env: Mapping[str, str] | None = None) -> int:
    """`seed` if given, else `TL_COURSE_SEED` (set by `tl-course run --seed N`), else 0."""
    if seed is not None:
        return int(seed)
    env = os.environ if env is None else env
    raw = env.get(SEED_ENV, "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{SEED_ENV}={raw!r} is not a whole number; set e.g. {SEED_ENV}=1 "
                         "or unset it for seed 0") from None
    if value < 0:
        raise ValueError(f"{SEED_ENV}={raw!r} must be 0 or more")
    return value


def start(
    notebook: str,
    seed: int | None = None,
    profile: str | None = None,
    device: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Session:
    """Resolve profile and device, seed everything, print one summary line; return a Session.

    `notebook` is the module number ("01") used to look up the estimated time. The seed
    comes from the argument, else `TL_COURSE_SEED`, else 0; it goes into the run card.
    """
    prof = get_profile(profile, env)
    dev = get_device(device, env)
    seed = session_seed(seed, env)
    seed_everything(seed)
    minutes = prof.minutes.get(notebook)
    eta = f" | estimated time ~{minutes:g} min" if minutes is not None else ""
    print(f"tl-course {notebook} | {environment_summary(dev, prof.name)} | seed {seed}{eta}")
    path = card_path(env)
    if path is not None:
        merge_into_card(path, {"session": {"seed": seed, "profile": prof.name}})
    if in_colab() and dev.type != "cuda":
        print(COLAB_NO_GPU)
    elif prof.name == "gpu" and dev.type != "cuda":
        print(f"note: the gpu profile is running on {dev}; expect it to be slow.")
    return Session(prof, dev, seed)
