"""Does a sentiment model built on the vectors treat two groups of names differently, and
is that the group or something else the names differ in (here: how often they occur)?

A model trained on sentiment words never sees a name, yet scores every name. The raw gap
between two name lists compares names that also differ in corpus frequency (GloVe's rank).
Two controls: compare only names in one frequency band, and regress the score on group and
log rank together. Claim only what survives them, with its uncertainty: the names are a
sample, so the intervals resample the names (bootstrap), within each list.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def positive_scores(model, vectors: np.ndarray) -> np.ndarray:
    """P(positive) of each row under a fitted probe (`ProbeResult.model` or any classifier
    with predict_proba)."""
    return model.predict_proba(np.asarray(vectors))[:, 1]


@dataclass(frozen=True)
class Gap:
    """Mean score of group a minus group b, with a two-sided permutation p-value."""

    mean_a: float
    mean_b: float
    p: float
    n_a: int
    n_b: int

    @property
    def gap(self) -> float:
        return self.mean_a - self.mean_b


def group_gap(scores_a: np.ndarray, scores_b: np.ndarray, n_permutations: int = 10_000,
              seed: int = 0) -> Gap:
    """The gap in mean score and the share of random relabellings of the pooled names with
    a gap at least as large in size (the observed labelling counted once)."""
    a, b = np.asarray(scores_a, float), np.asarray(scores_b, float)
    pooled, na = np.concatenate([a, b]), len(a)
    observed = abs(a.mean() - b.mean())
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((n_permutations, len(pooled))), axis=1)
    shuffled = pooled[perms]
    gaps = np.abs(shuffled[:, :na].mean(1) - shuffled[:, na:].mean(1))
    p = (1 + np.sum(gaps >= observed - 1e-12)) / (1 + n_permutations)
    return Gap(float(a.mean()), float(b.mean()), float(p), na, len(b))


def frequency_band(ranks: np.ndarray, low: int = 5_000, high: int = 100_000) -> np.ndarray:
    """Mask of the names whose vocabulary rank lies in [low, high]."""
    ranks = np.asarray(ranks)
    return (ranks >= low) & (ranks <= high)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson's on ranks; ties get their mean rank)."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def ols(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of y on the columns of x (include a column of ones for an intercept):
    coefficients and their classical standard errors."""
    y, x = np.asarray(y, float), np.asarray(x, float)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    sigma2 = resid @ resid / (len(y) - x.shape[1])
    se = np.sqrt(np.diag(sigma2 * np.linalg.inv(x.T @ x)))
    return coef, se


@dataclass(frozen=True)
class Regression:
    """score = intercept + group * [in group a] + log_rank * ln(rank), with standard errors."""

    intercept: float
    group: float
    group_se: float
    log_rank: float
    log_rank_se: float
    n: int


def group_rank_regression(scores: np.ndarray, in_group_a: np.ndarray,
                          ranks: np.ndarray) -> Regression:
    """Regress the scores on group membership and log vocabulary rank together."""
    x = np.column_stack([np.ones(len(scores)), np.asarray(in_group_a, float),
                         np.log(np.asarray(ranks, float))])
    coef, se = ols(scores, x)
    return Regression(float(coef[0]), float(coef[1]), float(se[1]), float(coef[2]),
                      float(se[2]), len(scores))


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_gap_interval(scores_a: np.ndarray, scores_b: np.ndarray, n_boot: int = 2_000,
                           level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the gap in mean score when each group's names are resampled
    with replacement (which names were chosen is the uncertainty)."""
    a, b = np.asarray(scores_a, float), np.asarray(scores_b, float)
    rng = np.random.default_rng(seed)
    gaps = (a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1)
            - b[rng.integers(0, len(b), (n_boot, len(b)))].mean(1))
    return _percentile_interval(gaps, level)


def bootstrap_group_interval(scores: np.ndarray, in_group_a: np.ndarray, ranks: np.ndarray,
                             n_boot: int = 2_000, level: float = 0.95,
                             seed: int = 0) -> tuple[float, float]:
    """Percentile interval of `group_rank_regression`'s group coefficient when the names
    are resampled with replacement within each group (both groups keep their size)."""
    y = np.asarray(scores, float)
    g = np.asarray(in_group_a, bool)
    x = np.column_stack([np.ones(len(y)), g.astype(float), np.log(np.asarray(ranks, float))])
    ia, ib = np.flatnonzero(g), np.flatnonzero(~g)
    rng = np.random.default_rng(seed)
    rows = np.concatenate([ia[rng.integers(0, len(ia), (n_boot, len(ia)))],
                           ib[rng.integers(0, len(ib), (n_boot, len(ib)))]], axis=1)
    xb, yb = x[rows], y[rows]  # (n_boot, n, 3), (n_boot, n)
    xtx = np.einsum("bni,bnj->bij", xb, xb)
    xty = np.einsum("bni,bn->bi", xb, yb)
    ok = np.linalg.matrix_rank(xtx) == x.shape[1]  # a resample with one rank only is dropped
    coef = np.linalg.solve(xtx[ok], xty[ok][..., None])[..., 0]
    return _percentile_interval(coef[:, 1], level)


def frequency_part(reg: Regression, in_group_a: np.ndarray, ranks: np.ndarray) -> float:
    """The part of the raw gap the regression puts on frequency: the log-rank coefficient
    times (mean log rank of group a - mean log rank of group b). With the intercept in the
    model, raw gap = group coefficient + this, exactly (least-squares residuals average zero
    within each group)."""
    g, lr = np.asarray(in_group_a, bool), np.log(np.asarray(ranks, float))
    return float(reg.log_rank * (lr[g].mean() - lr[~g].mean()))
