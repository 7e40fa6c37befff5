"""Unsupervised transfer: pretrain an encoder on unlabelled digits, then probe it with a few
labels (notebook 06).

- views: two random views of a batch (crop, shift, rotation, noise; each can be switched off)
- losses: NT-Xent (SimCLR) and rotated batches for rotation prediction
- pretext: the encoder, SimCLR / autoencoder / rotation models and their `fit` steps
- pretraining: pretraining through `tlc.fit`, a k-NN monitor, a load-or-train cache
- fewshot: k labelled images per class, paired episodes, probes and small trainings
"""

from .fewshot import (
    AugmentedStep,
    classifier_from,
    episode_indices,
    probe_accuracy,
    probe_episodes,
    train_episodes,
    train_few,
)
from .losses import nt_xent, nt_xent_stacked, rotate_batch
from .pretext import (
    METHODS,
    AutoEncoderNet,
    AutoEncoderStep,
    DigitEncoder,
    RotationNet,
    RotationStep,
    SimCLRNet,
    SimCLRStep,
    make_pretext,
)
from .pretraining import (
    PRETRAIN_STEPS,
    KnnMonitor,
    knn_predict_accuracy,
    pretrain,
    pretrained,
    unlabelled,
)
from .views import (
    CHOSEN_TEMPERATURE,
    CHOSEN_VIEWS,
    DEFAULT_VIEWS,
    TRANSFORMS,
    Views,
    augment,
    two_views,
)

__all__ = [
    "CHOSEN_TEMPERATURE", "CHOSEN_VIEWS", "DEFAULT_VIEWS", "METHODS", "PRETRAIN_STEPS",
    "TRANSFORMS",
    "AugmentedStep", "AutoEncoderNet", "AutoEncoderStep",
    "DigitEncoder", "KnnMonitor", "RotationNet", "RotationStep", "SimCLRNet", "SimCLRStep",
    "Views", "augment", "classifier_from", "episode_indices", "knn_predict_accuracy",
    "make_pretext", "nt_xent", "nt_xent_stacked", "pretrain", "pretrained", "probe_accuracy",
    "probe_episodes", "rotate_batch", "train_episodes", "train_few", "two_views", "unlabelled",
]
