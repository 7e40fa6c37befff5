"""Batches of an in-memory tensor dataset by slicing, instead of a per-item DataLoader.

A DataLoader fetches `dataset[i]` one item at a time and stacks the items again (collate):
harmless on a CPU, the bottleneck on a GPU when the whole dataset is already in memory.
`TensorLoader` holds the tensors (on the GPU when they fit) and gathers each batch with one
`index_select` per tensor.

The order is a DataLoader's, draw for draw: the same sampler classes with the same
generator, and the one extra number a DataLoader draws when an iteration starts. So a
notebook gives the same batches, and the same numbers, whichever loader it gets.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import (
    BatchSampler,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    TensorDataset,
)

from .distributed import Dist, shard

# Keep the data on the GPU only when it takes at most this share of the free memory.
GPU_SHARE = 0.25


def fits_on(tensors: tuple[torch.Tensor, ...], device: torch.device) -> bool:
    """Whether `tensors` can live on `device` for the whole run (always true on a CPU)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return sum(t.numel() * t.element_size() for t in tensors) <= GPU_SHARE * free


class _Shard(Sampler[int]):
    """Indices rank, rank + world, ... in order (evaluation: no padding, no repeats)."""

    def __init__(self, n: int, d: Dist) -> None:
        self.indices = shard(n, d)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class TensorLoader:
    """Shuffled (or ordered) mini-batches of a TensorDataset's tensors, sliced on `device`.

    With an active `dist`, a shuffled loader draws this process's shard with a
    DistributedSampler (set_epoch is called at the start of every pass, so each epoch
    reshuffles) and an ordered one takes every world_size-th example (see distributed.shard).
    """

    def __init__(self, ds: TensorDataset, batch_size: int, device: torch.device,
                 shuffle: bool = False, generator: torch.Generator | None = None,
                 drop_last: bool = False, dist: Dist | None = None, seed: int = 0) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.tensors = tuple(t.to(device) for t in ds.tensors)
        self.device, self.generator = device, generator
        self.batch_size, self.drop_last = batch_size, drop_last
        n = len(ds)
        self.sampler: Sampler[int]
        if dist is not None and dist.active:
            self.sampler = (DistributedSampler(ds, dist.world_size, dist.rank, shuffle=True,
                                               seed=seed, drop_last=drop_last)
                            if shuffle else _Shard(n, dist))
        elif shuffle:
            self.sampler = RandomSampler(ds, generator=generator)
        else:
            self.sampler = SequentialSampler(ds)
        self.batches = BatchSampler(self.sampler, batch_size, drop_last)
        self.passes = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        # A DataLoader draws one number (its workers' base seed) from its generator, or from
        # torch's global one, when an iteration starts; drawing it too keeps every later
        # random number, and so every result, the same as with a DataLoader.
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(self.passes)
        self.passes += 1
        if self.device.type != "cuda":
            # Lazily, batch by batch, as a DataLoader draws: a loop that stops early
            # (next(iter(loader))) leaves the generator where a DataLoader would.
            for g in self.batches:
                idx = torch.as_tensor(g)
                yield tuple(t.index_select(0, idx) for t in self.tensors)
            return
        # On a GPU: the whole epoch's order in one pinned, non-blocking copy, then each batch
        # is a slice of it (a copy per batch would make the host wait every step).
        groups = list(self.batches)
        if not groups:
            return
        order = torch.tensor([i for g in groups for i in g]).pin_memory()
        order = order.to(self.device, non_blocking=True)
        start = 0
        for g in groups:
            idx = order[start:start + len(g)]
            start += len(g)
            yield tuple(t.index_select(0, idx) for t in self.tensors)
