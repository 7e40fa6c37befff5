"""A mitigation, measured honestly: project out the direction that separates two groups.

The direction (difference of the two groups' mean vectors, unit length) is estimated on
half of the names; every vector loses its component along it; the sentiment model is
retrained on the projected words; then the name gap and the WEAT are measured on the
*other* half. Measured on the names that defined the direction, the projection looks far
better than it is: those names were used to find it.

The direction separates the two lists, and the lists also differ in corpus frequency, so it
can carry frequency as well as group: `Mitigation` reports how a held-out name's coordinate
along it follows its log rank, and the frequency-controlled group coefficient (score on
group and log rank, `names.group_rank_regression`) on held-out names before and after.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from .loaders import SentimentWords, WordVectors
from .names import group_rank_regression, positive_scores, spearman
from .probes import balanced_accuracy, fit_probe
from .splits import WordSplit
from .weat import effect_size


def group_direction(va: np.ndarray, vb: np.ndarray) -> np.ndarray:
    """Unit vector along mean(va) - mean(vb)."""
    d = np.asarray(va, float).mean(0) - np.asarray(vb, float).mean(0)
    return d / np.linalg.norm(d)


def project_out(m: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Remove each row's component along the unit vector u."""
    m = np.asarray(m, float)
    return m - np.outer(m @ u, u)


def halves(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random split of range(n) into an estimation half and a held-out half."""
    order = rng.permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


@dataclass
class Mitigation:
    """Means over random halvings: gaps and WEAT d before / after, held-out and in-sample,
    and the word sentiment balanced accuracy (test families) before / after. When name
    ranks are given, also (held-out names, means over halvings): Spearman's rho of the
    coordinate along the direction with the rank within each list, and the regression's
    group and log-rank coefficients before / after. `per_halving` keeps every halving's
    values (one row each, columns named by `PER_HALVING`)."""

    gap_held_before: float
    gap_held_after: float
    gap_in_before: float
    gap_in_after: float
    weat_held_before: float
    weat_held_after: float
    weat_in_before: float
    weat_in_after: float
    words_before: float
    words_after: float
    direction_rank_rho_a: float = float("nan")
    direction_rank_rho_b: float = float("nan")
    group_held_before: float = float("nan")
    group_held_after: float = float("nan")
    log_rank_held_before: float = float("nan")
    log_rank_held_after: float = float("nan")
    per_halving: np.ndarray | None = None

    def spread(self, column: str, level: float = 0.9) -> tuple[float, float]:
        """The central `level` range over halvings of one column (e.g. "gap_held_after")."""
        values = self.per_halving[:, PER_HALVING.index(column)]
        tail = (1 - level) / 2 * 100
        lo, hi = np.percentile(values, [tail, 100 - tail])
        return float(lo), float(hi)

    def share(self, column: str, below: str) -> float:
        """Share of halvings where `column` < `below` (e.g. group after < group before)."""
        h = self.per_halving
        return float(np.mean(h[:, PER_HALVING.index(column)] < h[:, PER_HALVING.index(below)]))


PER_HALVING = ("gap_held_before", "gap_held_after", "gap_in_before", "gap_in_after",
               "weat_held_before", "weat_held_after", "weat_in_before", "weat_in_after",
               "words_after", "direction_rank_rho_a", "direction_rank_rho_b",
               "group_held_before", "group_held_after", "log_rank_held_before",
               "log_rank_held_after")


def evaluate_projection(vectors: WordVectors, words: SentimentWords, split: WordSplit,
                        names_a: Sequence[str], names_b: Sequence[str],
                        pleasant: Sequence[str], unpleasant: Sequence[str], repeats: int = 10,
                        seed: int = 0, c: float = 1.0) -> Mitigation:
    """Average the projection's effect over `repeats` random halvings of both name lists
    (the frequency measures use `vectors.rank`)."""
    x = vectors.rows(words.words)
    va, vb = vectors.rows(names_a), vectors.rows(names_b)
    pa, pu = vectors.rows(pleasant), vectors.rows(unpleasant)
    y = words.labels
    rank_a = np.array([vectors.rank(w) for w in names_a], float)
    rank_b = np.array([vectors.rank(w) for w in names_b], float)
    rng = np.random.default_rng(seed)

    def measure(model, proj, ia, ib) -> tuple[float, float]:
        a, b = proj(va[ia]), proj(vb[ib])
        gap = positive_scores(model, a).mean() - positive_scores(model, b).mean()
        return float(gap), effect_size(a, b, proj(pa), proj(pu))

    def controlled(model, proj, ia, ib) -> tuple[float, float]:
        """Group and log-rank coefficients of the scores of names ia (a) and ib (b)."""
        scores = np.concatenate([positive_scores(model, proj(va[ia])),
                                 positive_scores(model, proj(vb[ib]))])
        group = np.r_[np.ones(len(ia)), np.zeros(len(ib))]
        reg = group_rank_regression(scores, group, np.r_[rank_a[ia], rank_b[ib]])
        return reg.group, reg.log_rank

    def word_accuracy(proj) -> float:
        model = fit_probe(proj(x[split.train]), y[split.train], c)
        return balanced_accuracy(y[split.test], model.predict(proj(x[split.test])))

    identity = lambda m: m
    before = fit_probe(x, y, c)
    rows = []
    for _ in range(repeats):
        (ea, ha), (eb, hb) = halves(len(va), rng), halves(len(vb), rng)
        u = group_direction(va[ea], vb[eb])
        proj = lambda m, u=u: project_out(m, u)
        after = fit_probe(proj(x), y, c)
        held_b, held_a = measure(before, identity, ha, hb), measure(after, proj, ha, hb)
        in_b, in_a = measure(before, identity, ea, eb), measure(after, proj, ea, eb)
        rho_a = spearman(va[ha] @ u, rank_a[ha])
        rho_b = spearman(vb[hb] @ u, rank_b[hb])
        ctl_b, ctl_a = controlled(before, identity, ha, hb), controlled(after, proj, ha, hb)
        rows.append([held_b[0], held_a[0], in_b[0], in_a[0], held_b[1], held_a[1], in_b[1],
                     in_a[1], word_accuracy(proj), rho_a, rho_b, ctl_b[0], ctl_a[0], ctl_b[1],
                     ctl_a[1]])
    table = np.array(rows, dtype=float)
    means = [float(v) for v in table.mean(axis=0)]
    return Mitigation(*means[:8], word_accuracy(identity), *means[8:], per_halving=table)


def as_dict(m: Mitigation) -> dict[str, float]:
    return {f.name: getattr(m, f.name) for f in fields(m) if f.name != "per_halving"}
