"""Run profiles: one notebook, three sizes (smoke / cpu / gpu).

`TL_COURSE_PROFILE` picks the profile; unset, the default is `gpu` when CUDA is
available, else `cpu`. A profile only holds sizes and switches; helpers take it
as an argument rather than reading it from anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

PROFILE_ENV = "TL_COURSE_PROFILE"


class ProfileError(ValueError):
    """An unknown profile name."""


@dataclass(frozen=True)
class Profile:
    """Sizes and switches for one run of a notebook.

    `train_size` / `test_size` cap how many examples are used (None: all there are);
    `allow_download` says whether data may be fetched; `require_full` makes a missing
    full dataset an error instead of a fallback to the offline sample.
    """

    name: str
    train_size: int | None
    test_size: int | None
    epochs: int
    batch_size: int
    tiny_size: int  # examples in the "overfit a tiny set" experiments
    allow_download: bool
    require_full: bool
    progress: bool  # show tqdm bars (off in smoke: nbval stores every refresh)
    seeds: int = 1  # repeats of small-data experiments (mean and spread over seeds)
    small_steps: int = 100  # gradient steps for one small-data training run
    # Rough wall time per notebook, minutes, for the first printed line.
    minutes: Mapping[str, float] = field(default_factory=dict)

    def scaled_epochs(self, factor: float, minimum: int = 1) -> int:
        """Epochs for an experiment that wants `factor` times the profile's default."""
        return max(minimum, round(self.epochs * factor))


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        train_size=600,
        test_size=300,
        epochs=2,
        batch_size=64,
        tiny_size=100,
        allow_download=False,
        require_full=False,
        progress=False,
        seeds=1,
        small_steps=10,
        minutes={"01": 0.2, "02": 0.3, "03": 0.3, "04": 0.3, "05": 0.2, "06": 0.5, "07": 0.5,
                 "08": 0.5, "09": 0.5},
    ),
    "cpu": Profile(
        name="cpu",
        train_size=12_000,
        test_size=2_000,
        epochs=6,
        batch_size=128,
        tiny_size=300,
        allow_download=True,
        require_full=False,
        progress=True,
        seeds=3,
        small_steps=40,
        minutes={"01": 1, "02": 1.5, "03": 1.5, "04": 3, "05": 2, "06": 4, "07": 4, "08": 3,
                 "09": 1.5},
    ),
    "gpu": Profile(
        name="gpu",
        train_size=None,
        test_size=None,
        epochs=12,
        batch_size=256,
        tiny_size=500,
        allow_download=True,
        require_full=True,
        progress=True,
        seeds=5,
        small_steps=100,
        minutes={"01": 4, "02": 6, "03": 6, "04": 10, "05": 6, "06": 6, "07": 5, "08": 5,
                 "09": 2},
    ),
}


def profile_names() -> list[str]:
    """The valid profile names, in order of size."""
    return list(PROFILES)


def default_profile_name(cuda_available: bool | None = None) -> str:
    """`gpu` when CUDA is available, else `cpu`."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    return "gpu" if cuda_available else "cpu"


def get_profile(name: str | None = None, env: Mapping[str, str] | None = None) -> Profile:
    """Return the profile called `name`, else the one `TL_COURSE_PROFILE` names, else the default.

    Raises ProfileError naming the valid profiles when the name is unknown.
    """
    env = os.environ if env is None else env
    source = "argument"
    if name is None:
        name, source = env.get(PROFILE_ENV) or None, PROFILE_ENV
    if name is None:
        return PROFILES[default_profile_name()]
    key = name.strip().lower()
    if key not in PROFILES:
        where = f" (from {PROFILE_ENV})" if source == PROFILE_ENV else ""
        raise ProfileError(
            f"unknown profile {name!r}{where}; choose one of: {', '.join(PROFILES)}"
        )
    return PROFILES[key]
