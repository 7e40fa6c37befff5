"""The Word Embedding Association Test (Caliskan, Bryson & Narayanan, Science 2017).

Target words X, Y (e.g. male and female names) and attribute words A, B (career, family):

    s(w, A, B)   = mean_a cos(w, a) - mean_b cos(w, b)
    d            = (mean_x s(x, A, B) - mean_y s(y, A, B)) / std_{w in X u Y} s(w, A, B)

with the sample standard deviation (n - 1) over the union. d > 0: X is closer to A (and Y to
B) than the other way round. The permutation test compares the statistic
sum_x s(x) - sum_y s(y) with its value over re-partitions of X u Y into two sets of the same
sizes. Nothing in the test is random: its uncertainty comes from the choice of words,
estimated by resampling them (bootstrap), not from seeds.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np


def _unit(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def associations(w: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """s(w, A, B) for each row of `w` (vectors; rows of a and b are the attribute words)."""
    w, a, b = _unit(w), _unit(a), _unit(b)
    return (w @ a.T).mean(1) - (w @ b.T).mean(1)


def effect_size(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Caliskan et al.'s d: difference of mean associations over their sample std."""
    sx, sy = associations(x, a, b), associations(y, a, b)
    return float((sx.mean() - sy.mean()) / np.concatenate([sx, sy]).std(ddof=1))


def permutation_p(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray,
                  n_permutations: int = 10_000, seed: int = 0,
                  exact_limit: int = 100_000) -> float:
    """One-sided p: the share of equal-size re-partitions of X u Y whose statistic is at
    least the observed one (the observed partition included, so p > 0). All partitions
    when there are at most `exact_limit`, else `n_permutations` random ones."""
    s = np.concatenate([associations(x, a, b), associations(y, a, b)])
    n, nx = len(s), len(x)
    observed = s[:nx].sum() - s[nx:].sum()
    total = s.sum()
    if math.comb(n, nx) <= exact_limit:
        firsts = np.array(list(itertools.combinations(range(n), nx)))
        stats = 2 * s[firsts].sum(1) - total  # sum over X_i minus sum over its complement
        return float(np.mean(stats >= observed - 1e-12))
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((n_permutations, n)), axis=1)[:, :nx]
    stats = 2 * s[perms].sum(1) - total
    return float((1 + np.sum(stats >= observed - 1e-12)) / (1 + n_permutations))


def bootstrap_interval(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray,
                       n_boot: int = 2_000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile interval of d when each of the four word sets is resampled with
    replacement (which words were chosen is the uncertainty)."""
    x, y, a, b = map(_unit, (x, y, a, b))
    cos_a, cos_b = np.vstack([x, y]) @ a.T, np.vstack([x, y]) @ b.T
    nx, ny = len(x), len(y)
    rng = np.random.default_rng(seed)
    ds = np.empty(n_boot)
    for i in range(n_boot):
        rows = np.concatenate([rng.integers(0, nx, nx), nx + rng.integers(0, ny, ny)])
        ia, ib = rng.integers(0, len(a), len(a)), rng.integers(0, len(b), len(b))
        s = cos_a[np.ix_(rows, ia)].mean(1) - cos_b[np.ix_(rows, ib)].mean(1)
        sd = s.std(ddof=1)
        # A resample of one repeated word has no spread: its sd is 0, or rounding noise
        # (about 1e-17) that would make a meaningless huge d. Drop it either way.
        ds[i] = (s[:nx].mean() - s[nx:].mean()) / sd if sd > 1e-12 else np.nan
    ds = ds[np.isfinite(ds)]
    if ds.size == 0:  # no resample had any spread: d is undefined
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(ds, [tail, 100 - tail])
    return float(lo), float(hi)


@dataclass(frozen=True)
class WeatResult:
    """Effect size, permutation p and bootstrap interval of one test."""

    d: float
    p: float
    low: float
    high: float

    def __str__(self) -> str:
        return (f"d = {self.d:.2f} (95% bootstrap interval {self.low:.2f} to {self.high:.2f}), "
                f"permutation p = {self.p:.2g}")


def weat(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray,
         n_permutations: int = 10_000, n_boot: int = 2_000, seed: int = 0) -> WeatResult:
    """The whole test on vectors: d, p and the bootstrap interval."""
    lo, hi = bootstrap_interval(x, y, a, b, n_boot=n_boot, seed=seed)
    return WeatResult(effect_size(x, y, a, b), permutation_p(x, y, a, b, n_permutations, seed),
                      lo, hi)
