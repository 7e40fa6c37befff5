"""tl_course: helpers for the transfer-learning course.

Importing it runs nothing: no downloads, no seeding, no device probing, and not even torch
is imported until a helper is first used (`tlc.fit`, `tlc.data`, ...). That keeps
`tl-course doctor` working in an environment whose torch or scikit-learn is broken, which
is when it is needed. The names below are the ones notebooks use as `tlc.<name>`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "adapt", "bias", "capstone", "claims", "data", "device", "domains", "exercises", "explain",
    "features", "models", "multimnist", "multitask", "photos", "plots", "profile", "runcard",
    "selfsup", "session", "text", "train", "transfer", "transferability", "widgets",
)
# name -> submodule it comes from
_NAMES = {
    "claim": "claims", "DigitsData": "data", "load_digits": "data", "make_loader": "data",
    "get_device": "device", "seed_everything": "device", "count_parameters": "models",
    "get_profile": "profile", "record": "runcard", "record_skip": "runcard",
    "Session": "session", "start": "session", "History": "train", "accuracy": "train",
    "evaluate": "train", "fit": "train", "predict": "train",
}

__all__ = [*_SUBMODULES, *_NAMES]


def __getattr__(name: str) -> Any:
    """Import a submodule, or the submodule that defines `name`, on first use."""
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'tl_course' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
