"""Iterate source and target domains together: (source_batch, target_batch) pairs.

An epoch is one pass over the labelled source; the (unlabelled) target loader is
restarted whenever it runs out, so the two domains may have different sizes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


class PairedLoader:
    """Yields (source_batch, target_batch); len == len(source); the target cycles.

    Unlike itertools.cycle, the target loader is re-iterated rather than replayed from
    memory, so a shuffling target loader gives a new order on every pass.
    """

    def __init__(self, source: Iterable, target: Iterable):
        for name, loader in (("source", source), ("target", target)):
            try:
                size = len(loader)  # type: ignore[arg-type]
            except TypeError:
                continue
            if size == 0:
                raise ValueError(
                    f"the {name} loader is empty: check the {name} dataset size and the batch "
                    "size (drop_last=True with fewer examples than one batch gives no batches)"
                )
        self.source, self.target = source, target

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        target_iter = iter(self.target)
        for source_batch in self.source:
            try:
                target_batch = next(target_iter)
            except StopIteration:
                target_iter = iter(self.target)
                try:
                    target_batch = next(target_iter)
                except StopIteration:
                    raise ValueError("the target loader yielded no batches") from None
            yield source_batch, target_batch


def paired(source: Iterable, target: Iterable) -> PairedLoader:
    """Shorthand for PairedLoader(source, target)."""
    return PairedLoader(source, target)
