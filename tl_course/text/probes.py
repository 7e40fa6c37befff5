"""Probes and baselines for word sentiment, scored with balanced accuracy.

Every method gets the same labelled words (k per class from the training families), picks
its regularisation on the same validation words, and is scored on the same test words:

- a linear probe on word vectors (`tl_course.features.sklearn_probe`: standardised
  features, logistic regression), for GloVe and for random vectors (no transfer);
- character 2-4-gram TF-IDF with logistic regression: no pretraining, spelling only.

Nothing fitted here sees a test word: scalers, vocabularies and weights come from the
training words alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .splits import WordSplit, has_relative, k_per_class

# Inverse regularisation strengths tried on the validation words, for every method.
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over the classes present in `y_true` of the share of that class predicted right
    (recall): 0.5 for always answering one class of two, however unbalanced the words are."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0 or len(y_true) != len(y_pred):
        raise ValueError(f"need equal, non-empty label arrays, got {len(y_true)} and {len(y_pred)}")
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


@dataclass
class ProbeResult:
    """A fitted probe: test and validation balanced accuracy, the C chosen, the model."""

    test: float
    val: float
    c: float
    model: Any

    def predict(self, inputs: Any) -> np.ndarray:
        return self.model.predict(inputs)


def _choose(fit: Callable[[float], Any], val_inputs: Any, val_y: np.ndarray,
            cs: Sequence[float]) -> tuple[Any, float, float]:
    """Fit once per C; keep the best on validation (the first, i.e. strongest, on ties)."""
    best = None
    for c in cs:
        model = fit(c)
        score = balanced_accuracy(val_y, model.predict(val_inputs))
        if best is None or score > best[1]:
            best = (model, score, c)
    assert best is not None, "empty grid of C values"
    return best


def fit_probe(vectors: np.ndarray, labels: np.ndarray, c: float = 1.0) -> Any:
    """`tl_course.features.sklearn_probe` on these vectors: standardised logistic regression
    (a scikit-learn pipeline with predict and predict_proba)."""
    import torch

    from ..features import Features, sklearn_probe

    feats = Features(torch.from_numpy(np.asarray(vectors, dtype=np.float32)),
                     torch.from_numpy(np.asarray(labels)))
    return sklearn_probe(feats, feats, c=c)[0]


def vector_probe(vectors: np.ndarray, labels: np.ndarray, train: np.ndarray, val: np.ndarray,
                 test: np.ndarray, cs: Sequence[float] = C_GRID) -> ProbeResult:
    """Standardised logistic regression on rows `train` of `vectors`, C chosen on `val`."""
    model, val_score, c = _choose(lambda c: fit_probe(vectors[train], labels[train], c),
                                  np.asarray(vectors[val]), labels[val], cs)
    test_score = balanced_accuracy(labels[test], model.predict(np.asarray(vectors[test])))
    return ProbeResult(test_score, val_score, c, model)


def char_ngram_probe(words: Sequence[str], labels: np.ndarray, train: np.ndarray,
                     val: np.ndarray, test: np.ndarray, cs: Sequence[float] = C_GRID,
                     ngrams: tuple[int, int] = (2, 4)) -> ProbeResult:
    """TF-IDF of character n-grams (within word boundaries) + logistic regression; the
    n-gram vocabulary and IDF weights come from the training words only."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    words = np.asarray(words)

    def fit(c: float):
        model = make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=ngrams),
                              LogisticRegression(C=c, max_iter=2000))
        return model.fit(list(words[train]), labels[train])

    model, val_score, c = _choose(fit, list(words[val]), labels[val], cs)
    test_score = balanced_accuracy(labels[test], model.predict(list(words[test])))
    return ProbeResult(test_score, val_score, c, model)


def random_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Independent standard-normal vectors, one per word: the same probe with no transfer."""
    return np.random.default_rng(seed).standard_normal((n, dim))


Method = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


def label_efficiency(methods: Mapping[str, Method], labels: np.ndarray, split: WordSplit,
                     ks: Sequence[int], episodes: int, seed: int = 0,
                     progress: bool = False) -> dict[str, dict[int, list[float]]]:
    """Test balanced accuracy of every method, per k, per episode. An episode draws k
    training words per class from the split's training pool; every method gets the same
    words (paired). `methods[name](train, val, test)` returns a test balanced accuracy."""
    from tqdm.auto import tqdm

    out: dict[str, dict[int, list[float]]] = {name: {k: [] for k in ks} for name in methods}
    jobs = [(k, e) for k in ks for e in range(episodes)]
    for k, e in tqdm(jobs, desc="episodes", disable=not progress, leave=False):
        train = k_per_class(labels, split.train, k, seed=episode_seed(seed, k, e))
        for name, method in methods.items():
            out[name][k].append(float(method(train, split.val, split.test)))
    return out


def episode_seed(seed: int, k: int, episode: int) -> int:
    """One seed per (run seed, k, episode), so runs at other seeds draw other words."""
    return int(np.random.SeedSequence([seed, k, episode]).generate_state(1)[0])


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of a normal 95% interval over episodes (0 for one value)."""
    v = np.asarray(values, dtype=float)
    half = 1.96 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
    return float(v.mean()), float(half)


@dataclass
class LeakBreakdown:
    """Means over episodes: the share of test words with a relative (same family) among the
    training words, and per method the test balanced accuracy on all test words, on those
    with a relative, and on the rest."""

    share_with_relative: float
    scores: dict[str, tuple[float, float, float]]  # name -> (all, with a relative, rest)


Predictor = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def leak_by_relatives(predictors: Mapping[str, Predictor], labels: np.ndarray,
                      families: Sequence[str], split: WordSplit, k: int, episodes: int,
                      seed: int = 0) -> LeakBreakdown:
    """Where a split's leak comes from: each episode draws k training words per class (the
    same words as `label_efficiency` at this seed), each `predictors[name](train, val, test)`
    returns predicted labels for the test words, scored on the test words with a relative
    among the training words and on the rest."""
    labels = np.asarray(labels)
    shares, rows = [], {name: [] for name in predictors}
    for e in range(episodes):
        train = k_per_class(labels, split.train, k, seed=episode_seed(seed, k, e))
        rel = has_relative(families, train, split.test)
        truth = labels[split.test]
        shares.append(rel.mean())
        for name, predict in predictors.items():
            pred = np.asarray(predict(train, split.val, split.test))
            parts = [balanced_accuracy(truth[m], pred[m]) if m.any() else float("nan")
                     for m in (np.ones_like(rel), rel, ~rel)]
            rows[name].append(parts)
    scores = {name: tuple(float(v) for v in np.nanmean(np.array(r, float), axis=0))
              for name, r in rows.items()}
    return LeakBreakdown(float(np.mean(shares)), scores)
