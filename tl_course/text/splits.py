"""Splits of a word list that do not leak: word families stay on one side.

"abandon", "abandoned" and "abandonment" share a Porter stem; if one is a training word
and another a test word, a model that reads spelling gets the test word for free. A family
split puts whole families (words with one stem) in train, validation or test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .loaders import TextDataError


def stems(words: Sequence[str]) -> list[str]:
    """Porter stems (NLTK's stemmer, which needs no data download)."""
    try:
        from nltk.stem import PorterStemmer
    except (ImportError, LookupError):  # nltk 3.9.0 wanted WordNet data just to import
        raise TextDataError("word families need the Python package 'nltk' (its Porter "
                            'stemmer, no data download): run pip install "nltk>=3.9.1"') from None
    stemmer = PorterStemmer()
    return [stemmer.stem(w) for w in words]


@dataclass(frozen=True)
class WordSplit:
    """Indices into a word list: training pool, validation words, test words."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    kind: str  # "family" or "random"

    def sizes(self) -> tuple[int, int, int]:
        return len(self.train), len(self.val), len(self.test)


def _take_groups(groups: list[np.ndarray], test_words: int, val_words: int,
                 kind: str) -> WordSplit:
    """Fill test, then validation, with whole groups in the given order; the rest trains."""
    test, val, train = [], [], []
    n_test = n_val = 0
    for members in groups:
        if n_test < test_words:
            test.append(members)
            n_test += len(members)
        elif n_val < val_words:
            val.append(members)
            n_val += len(members)
        else:
            train.append(members)
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    return WordSplit(cat(train), cat(val), cat(test), kind)


def family_split(families: Sequence[str], test_fraction: float = 0.4, val_words: int = 300,
                 seed: int = 0) -> WordSplit:
    """Shuffle the families (one per word, e.g. `stems(words)`), then give whole families to
    test until `test_fraction` of the words are there, then to validation until
    `val_words` are; the remaining families form the training pool."""
    fam = np.asarray(families)
    unique, inverse = np.unique(fam, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(unique))
    members = [np.flatnonzero(inverse == u) for u in order]
    return _take_groups(members, round(test_fraction * len(fam)), val_words, "family")


def random_split(n: int, test_fraction: float = 0.4, val_words: int = 300,
                 seed: int = 0) -> WordSplit:
    """The same sizes, word by word: families straddle the split (the leaky way)."""
    order = np.random.default_rng(seed).permutation(n)
    return _take_groups([np.array([i]) for i in order], round(test_fraction * n), val_words,
                        "random")


def k_per_class(labels: np.ndarray, pool: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """`k` indices of each class, drawn without replacement from `pool` (sorted by class)."""
    labels, rng = np.asarray(labels), np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        members = pool[labels[pool] == c]
        if len(members) < k:
            raise ValueError(f"class {c} has {len(members)} words in the pool; k = {k} is too many")
        picked.append(rng.choice(members, size=k, replace=False))
    return np.concatenate(picked)


def has_relative(families: Sequence[str], train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """For each test word, whether a word of its family (same stem) is among the training
    words: the leak a random split lets through (always False on a family split)."""
    fam = np.asarray(families)
    return np.isin(fam[np.asarray(test)], fam[np.asarray(train)])
