"""A sentence's sentiment from averaged word vectors, word by word.

The score of a sentence is the probe applied to the mean of its words' vectors. The probe is
linear (after standardising), so the score's logit splits exactly into one share per word
plus the intercept:

    logit = b + w . ((mean_i x_i - mu) / s) = b + sum_i w . ((x_i - mu) / s) / n

Words missing from the vocabulary get no vector: they are listed, marked out-of-vocabulary,
and left out of the mean (not silently dropped). Contractions are split the way GloVe's
corpus was tokenised ("don't" -> "do" + "n't", "it's" -> "it" + "'s"), so "n't" is a word
with a vector of its own. Word order and sarcasm are invisible to an average, and so is
which word a negation applies to: try "not good".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .loaders import WordVectors

TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# The clitics GloVe's tokeniser (Stanford's, Penn Treebank style) splits off as tokens.
CLITICS = ("n't", "'s", "'re", "'ll", "'ve", "'d", "'m")


def split_clitic(token: str) -> list[str]:
    """"don't" -> ["do", "n't"], "it's" -> ["it", "'s"], "can't" -> ["ca", "n't"] (as in
    GloVe's vocabulary); a token without one of `CLITICS` at its end stays whole."""
    for clitic in CLITICS:
        if token.endswith(clitic) and len(token) > len(clitic):
            return [token[: -len(clitic)], clitic]
    return [token]


def tokenize(sentence: str) -> list[str]:
    """Lower-case words (GloVe's vocabulary is lower-case), contractions split like GloVe's
    ("isn't" -> "is", "n't"); other punctuation dropped. Curly apostrophes count as "'"."""
    text = sentence.lower().replace("\u2019", "'")
    return [piece for token in TOKEN_RE.findall(text) for piece in split_clitic(token)]


@dataclass(frozen=True)
class Contribution:
    """One word: whether GloVe has it, and its share of the logit (None when it does not)."""

    word: str
    in_vocab: bool
    share: float | None


@dataclass(frozen=True)
class SentenceScore:
    words: list[Contribution]
    intercept: float
    logit: float | None  # None when no word is in the vocabulary

    @property
    def probability(self) -> float | None:
        return None if self.logit is None else 1 / (1 + math.exp(-self.logit))


def explain(sentence: str, vectors: WordVectors, probe: Any) -> SentenceScore:
    """Each word's share of the averaged-vector logit under a standardised probe pipeline."""
    scaler, logreg = probe[0], probe[-1]
    w = logreg.coef_[0] / scaler.scale_
    b = float(logreg.intercept_[0] - w @ scaler.mean_)  # logit = b + w . mean(x)
    tokens = tokenize(sentence)
    known = [t for t in tokens if t in vectors]
    shares = dict(zip(known, vectors.rows(known) @ w / max(1, len(known)), strict=True))
    words = [Contribution(t, t in vectors, float(shares[t]) if t in vectors else None)
             for t in tokens]
    # Shares of repeated words: each occurrence adds its share once.
    logit = b + sum(c.share for c in words if c.share is not None) if known else None
    return SentenceScore(words, b, logit)


def table(score: SentenceScore) -> str:
    """The contributions as a plain-text table (what a run without widgets prints)."""
    lines = [f"{'word':<16}{'share of logit':>16}"]
    for c in score.words:
        shown = f"{c.share:+16.3f}" if c.share is not None else f"{'not in GloVe':>16}"
        lines.append(f"{c.word:<16}{shown}")
    lines.append(f"{'(intercept)':<16}{score.intercept:+16.3f}")
    if score.probability is None:
        lines.append("no word of the sentence is in GloVe: no score")
    else:
        lines.append(f"P(positive) = {score.probability:.3f} (logit {score.logit:+.3f})")
    return "\n".join(lines)


class SentencePanel:
    """A text box: type a sentence, see each word's contribution. Prints the table for the
    sentence given as ordinary output, so a run without a widget manager shows it too."""

    def __init__(self, vectors: WordVectors, probe: Any):
        self.vectors, self.probe = vectors, probe
        self.box: Any = None

    def explain(self, sentence: str) -> SentenceScore:
        return explain(sentence, self.vectors, self.probe)

    def show(self, sentence: str) -> SentenceScore:
        """Print the table for `sentence`, then display the text box (when ipywidgets works)."""
        score = self.explain(sentence)
        print(table(score))
        try:
            import ipywidgets as w
            from IPython.display import display

            text = w.Text(value=sentence, description="sentence",
                          layout=w.Layout(width="90%"), continuous_update=False)
            out = w.Output()

            def update(change: dict) -> None:
                with out:
                    out.clear_output(wait=True)
                    print(table(self.explain(change["new"])))

            text.observe(update, names="value")
            self.box = w.VBox([text, out])
            display(self.box)
        except Exception as exc:  # no widgets here: the printed table is the result
            print(f"(no interactive box: {type(exc).__name__}; call panel.show('...') instead)")
        return score
