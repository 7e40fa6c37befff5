"""Several processes, one model: the pieces `torchrun` + DistributedDataParallel need.

`torchrun --nproc-per-node N ...` starts N copies of a program and tells each, through
environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), who it is.
`init_from_env` reads them, joins the process group (NCCL on GPUs, gloo on CPUs) and returns
a `Dist`: which process this is, on which device. Helpers take that object as an argument
(`fit(..., dist=d)`, `make_loader(..., dist=d)`); nothing here reads a global.

The rules the course keeps (DESIGN.md, "GPU awareness and scale-out"):
- every process holds the same model; DDP averages gradients, so parameters stay identical;
- each process trains on its own shard (DistributedSampler, reshuffled every epoch);
- evaluation splits the set without padding and all-reduces counts, so no example is
  dropped or counted twice;
- rank 0 alone prints, saves and exports; everyone meets at a barrier before the end.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A distributed launch that cannot work as asked."""


@dataclass(frozen=True)
class Dist:
    """This process's place in a distributed run (world_size 1: a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = "none"

    @property
    def active(self) -> bool:
        """True when there is more than one process to talk to."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, saves and exports."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model as DDP sees it: SyncBatchNorm where BatchNorm meets GPUs, then DDP.

        Only parameters that require a gradient now are synchronised, so wrap again after
        freezing or unfreezing (fit wraps at the start of every call).
        """
        if not self.active:
            return model
        if self.device.type == "cuda":
            # BatchNorm statistics over the global batch; gloo has no SyncBatchNorm, so on
            # CPUs each process normalises with its own shard's statistics.
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum `t` over every process (in place); a no-op in a single process."""
        if self.active:
            tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        """Wait for every process (a no-op in a single process)."""
        if self.active:
            tdist.barrier()

    def describe(self) -> str:
        """One line for the log: how many processes, which backend, which device."""
        if not self.active:
            return f"1 process on {self.device}"
        return (f"{self.world_size} processes ({self.backend}), this is rank {self.rank} on "
                f"{self.device}")


def launched_by_torchrun(env: Mapping[str, str] | None = None) -> bool:
    """True when the environment says this process is one of several (torchrun sets it)."""
    env = os.environ if env is None else env
    return int(env.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device | None = None,
                  env: Mapping[str, str] | None = None) -> Dist:
    """Join the process group torchrun describes in the environment; pick backend and device.

    On GPUs each process takes the GPU of its LOCAL_RANK with NCCL; on CPUs gloo. Without
    torchrun's variables (WORLD_SIZE unset or 1) this returns a single-process Dist and
    starts nothing.
    """
    env = os.environ if env is None else env
    if not launched_by_torchrun(env):
        from .device import get_device

        return Dist(device=device or get_device())
    missing = [k for k in ENV_KEYS if k not in env]
    if missing:
        raise DistributedError(f"WORLD_SIZE > 1 but {', '.join(missing)} not set: start the "
                               "program with torchrun --nproc-per-node N ...")
    rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    if device is None:
        device = torch.device("cuda", local) if torch.cuda.is_available() else \
            torch.device("cpu")
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) here: use "
                "--nproc-per-node at most the number of GPUs")
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend, rank=rank, world_size=world)
    return Dist(rank=rank, world_size=world, local_rank=local, device=device, backend=backend)


def shutdown(d: Dist) -> None:
    """Barrier, then leave the process group (so no process exits while others still talk)."""
    if d.active and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


def shard(n: int, d: Dist) -> range:
    """This process's share of n examples for evaluation: rank, rank + world, ...

    The shards are disjoint and together cover all n exactly once; their sizes differ by
    at most one (no padding, unlike DistributedSampler, which repeats examples to even out).
    """
    return range(d.rank, n, d.world_size)


def gather_objects(obj: object, d: Dist) -> list[object]:
    """Every process's `obj`, in rank order (a one-item list in a single process)."""
    if not d.active:
        return [obj]
    out: list[object] = [None] * d.world_size
    tdist.all_gather_object(out, obj)
    return out
