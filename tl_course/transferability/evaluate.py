"""Measure what each source gives a few-label target, and what each score predicted.

All sources are measured on the same episodes (the same k labelled images per class),
so differences between sources are paired.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..features import Features
from ..selfsup.fewshot import classifier_from, episode_indices, probe_episodes, train_episodes
from .ladder import RANDOM_INIT, features_of, source_probs
from .scores import SCORES, leep


@dataclass
class LadderResults:
    """Per source: probe accuracies by k, fine-tuned accuracies by budget (steps)."""

    probe: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    finetune: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # probing, fine-tuning

    def mean(self, kind: str, source: str, key: int) -> float:
        return float(np.mean(getattr(self, kind)[source][key]))


def measure_ladder(models: Mapping[str, nn.Module], pool: TensorDataset, test: TensorDataset,
                   device: torch.device, *, ks: Sequence[int], probe_draws: int,
                   finetune_k: int, budgets: Sequence[int], finetune_draws: int,
                   lr: float = 3e-3, seed: int = 0) -> tuple[LadderResults, dict[str, Features]]:
    """Probe every model at each k (`probe_draws` episodes) and fine-tune a copy of it at
    each budget in `budgets` (steps) on `finetune_draws` episodes of `finetune_k` images
    per class. Returns the results and each model's features of `pool` (for scoring)."""
    labels = pool.tensors[1]
    draws = {k: episode_indices(labels, k, probe_draws, seed=seed) for k in ks}
    ft_draws = episode_indices(labels, finetune_k, finetune_draws, seed=seed)
    num_classes = int(labels.max()) + 1
    res = LadderResults()
    start = time.perf_counter()
    feats = {}
    for name, model in models.items():
        feats[name] = features_of(model, pool, device)
        test_f = features_of(model, test, device)
        res.probe[name] = {k: probe_episodes(feats[name], test_f, draws[k]) for k in ks}
    res.seconds["probing"] = time.perf_counter() - start
    start = time.perf_counter()
    for name, model in models.items():
        res.finetune[name] = {
            steps: train_episodes(lambda m=model: classifier_from(m, num_classes), pool, test,
                                  ft_draws, device, steps=steps, lr=lr, views=None)
            for steps in budgets}
    res.seconds["fine-tuning"] = time.perf_counter() - start
    return res, feats


def score_sources(models: Mapping[str, nn.Module], pool: TensorDataset,
                  feats: Mapping[str, Features], draws: Sequence[torch.Tensor],
                  device: torch.device) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Each score of each source, averaged over the labelled episodes `draws` (rows of
    `pool`), and each score's total time. LEEP needs a source head, so the random-init
    encoder gets none. Returns ({score: {source: value}}, {score: seconds})."""
    images, labels = pool.tensors
    table: dict[str, dict[str, float]] = {s: {} for s in [*SCORES, "LEEP"]}
    seconds = dict.fromkeys(table, 0.0)
    for name, model in models.items():
        f = feats[name]
        for score, fn in SCORES.items():
            start = time.perf_counter()
            table[score][name] = float(np.mean([fn(f.x[i], f.y[i]) for i in draws]))
            seconds[score] += time.perf_counter() - start
        if name != RANDOM_INIT:
            start = time.perf_counter()
            table["LEEP"][name] = float(np.mean([
                leep(source_probs(model, images[i], device), labels[i]) for i in draws]))
            seconds["LEEP"] += time.perf_counter() - start
    return table, seconds
