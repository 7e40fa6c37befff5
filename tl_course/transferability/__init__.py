"""When transfer fails: a ladder of sources from close to unrelated, and scores that rank
sources before any training (LogME, LEEP, H-score, a cross-validated probe)."""

from .evaluate import LadderResults, measure_ladder, score_sources
from .ladder import (
    RANDOM_INIT,
    RUNGS,
    SOURCE_STEPS,
    cached_source,
    features_of,
    ladder_sources,
    new_encoder,
    rotate,
    source_probs,
    train_on,
    train_source,
    transform,
)
from .scores import SCORES, cv_probe, h_score, leep, logme, rank_agreement

__all__ = [
    "LadderResults", "RANDOM_INIT", "RUNGS", "SCORES", "SOURCE_STEPS", "cached_source",
    "cv_probe", "features_of", "h_score", "ladder_sources", "leep", "logme",
    "measure_ladder", "new_encoder", "rank_agreement", "rotate", "score_sources",
    "source_probs", "train_on", "train_source", "transform",
]
