"""Run under torchrun by tests/test_distributed.py: one process of a two-process CPU run.

    torchrun --nproc-per-node 2 tests/dist_worker.py OUT FOLDER

Each process records what the test checks from outside, in files named after its rank
(the test's own files, not the library's): its parameters after a DDP fit, what its
loaders gave it, its evaluation, and its run of train_folder into OUT/capstone-rank<R>
(only rank 0 may write there).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from tl_course.capstone import SCRATCH, train_folder
from tl_course.data import make_loader
from tl_course.device import seed_everything
from tl_course.distributed import init_from_env, shutdown
from tl_course.train import evaluate, fit

# Shared with the test (which imports this module): the data and model of the DDP check.
N_TRAIN, N_VAL, PER_PROCESS, EPOCHS, SEED = 90, 37, 8, 2, 3


def toy_data() -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(N_TRAIN + N_VAL, 2, 6, 6, generator=g)
    y = (x[:, 0].mean((1, 2)) > x[:, 1].mean((1, 2))).long() + 2 * (x[:, 0, 0, 0] > 0).long()
    return (TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), TensorDataset(x[N_TRAIN:], y[N_TRAIN:]))


def toy_model() -> nn.Module:
    """GroupNorm, not BatchNorm: normalisation per example, so two processes on halves of
    a batch compute exactly what one process computes on the whole batch."""
    seed_everything(SEED)
    return nn.Sequential(nn.Conv2d(2, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 4))


def main(out: Path, folder: Path) -> None:
    d = init_from_env()
    device = d.device
    train, val = toy_data()
    loader = make_loader(train, PER_PROCESS, device, shuffle=True, seed=SEED, dist=d)
    order = []  # this process's indices in each epoch (the loader calls set_epoch per pass)
    for epoch in range(EPOCHS):
        loader.sampler.set_epoch(epoch)
        order.append(list(loader.sampler))
    model = toy_model()
    history = fit(model, loader, epochs=EPOCHS, device=device, lr=1e-2, progress=False,
                  dist=d)
    val_metrics = evaluate(model, make_loader(val, 5, device, dist=d), device, dist=d)
    torch.save({"state": model.state_dict(), "history": history.metrics,
                "val": val_metrics, "order": order, "passes": loader.passes},
               out / f"rank{d.rank}.pt")
    result = train_folder(folder, out / f"capstone-rank{d.rank}", backbone=SCRATCH,
                          epochs=2, profile="smoke", progress=False, dist=d)
    (out / f"capstone-metrics-rank{d.rank}.json").write_text(json.dumps(result.metrics))
    shutdown(d)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
