"""tl_course: helpers for the transfer-learning course.

Importing it runs nothing: no downloads, no seeding, no device probing.
The names below are the ones notebooks use as `tlc.<name>`.
"""

from . import (
    adapt,
    claims,
    data,
    device,
    domains,
    exercises,
    features,
    models,
    multimnist,
    multitask,
    photos,
    plots,
    profile,
    runcard,
    train,
    transfer,
    widgets,
)
from .claims import claim
from .data import DigitsData, load_digits, make_loader
from .device import get_device, seed_everything
from .models import count_parameters
from .profile import get_profile
from .runcard import record, record_skip
from .session import Session, start
from .train import History, accuracy, evaluate, fit, predict

__version__ = "0.1.0"

__all__ = [
    "adapt", "claims", "data", "device", "domains", "exercises", "features", "models", "multimnist",
    "multitask", "photos", "plots", "profile", "runcard", "train", "transfer",
    "widgets",
    "DigitsData", "History", "Session", "accuracy", "claim", "count_parameters", "evaluate", "fit",
    "get_device", "get_profile", "load_digits", "make_loader", "predict", "record",
    "record_skip", "seed_everything", "start",
]
