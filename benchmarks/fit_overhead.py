"""What tlc.fit costs over a bare PyTorch loop: same model, data, batches and steps.

    python benchmarks/fit_overhead.py [--steps 300] [--repeats 5] [--device cpu|cuda]

Both loops train a fresh DigitCNN on in-memory MNIST-sized tensors with AdamW, batch 64.
The bare loop is the minimum a careful user writes (shuffle with randperm, slice, step,
sum the loss on the device, read it once). The runs alternate (fit, bare, fit, bare, ...)
after a warm-up, and the ratio of the medians is printed; it should be <= 1.05.

On CUDA it also counts host synchronisations during one epoch of fit with
torch.cuda.set_sync_debug_mode("warn") (each sync raises a warning): 0 per step is the aim;
the reads once per epoch (metrics) and every CHECK_EVERY steps (non-finite check) remain.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from tl_course.data import make_loader
from tl_course.device import get_device, seed_everything
from tl_course.models import DigitCNN
from tl_course.train import fit

BATCH = 64


def data(n: int, device: torch.device) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(n, 1, 28, 28, generator=g),
                         torch.randint(0, 10, (n,), generator=g))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_fit(ds: TensorDataset, device: torch.device) -> float:
    seed_everything(0)
    model = DigitCNN().to(device)
    loader = make_loader(ds, BATCH, device, shuffle=True, seed=0, drop_last=True)
    sync(device)
    start = time.perf_counter()
    fit(model, loader, epochs=1, device=device, lr=1e-3, progress=False)
    sync(device)
    return time.perf_counter() - start


def run_bare(ds: TensorDataset, device: torch.device) -> float:
    seed_everything(0)
    model = DigitCNN().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    x, y = (t.to(device) for t in ds.tensors)
    sync(device)
    start = time.perf_counter()
    model.train()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).to(device)
    total = torch.zeros((), device=device)
    for s in range(0, len(x) - BATCH + 1, BATCH):
        idx = order[s:s + BATCH]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        total += loss.detach()
    float(total)  # one read per epoch, as fit does
    sync(device)
    return time.perf_counter() - start


def count_syncs(ds: TensorDataset, device: torch.device) -> int:
    """Host synchronisations CUDA reports during one epoch of fit."""
    model = DigitCNN().to(device)
    loader = make_loader(ds, BATCH, device, shuffle=True, seed=0, drop_last=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fit(model, loader, epochs=1, device=device, progress=False)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = get_device(args.device)
    ds = data(args.steps * BATCH, device)
    run_fit(ds, device), run_bare(ds, device)  # warm-up (allocators, kernels, caches)
    times: dict[str, list[float]] = {"fit": [], "bare": []}
    for _ in range(args.repeats):
        times["fit"].append(run_fit(ds, device))
        times["bare"].append(run_bare(ds, device))
    fit_s, bare_s = statistics.median(times["fit"]), statistics.median(times["bare"])
    print(f"device {device}, {args.steps} steps of batch {BATCH}, DigitCNN, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"  tlc.fit   {fit_s:.3f} s  ({1e3 * fit_s / args.steps:.2f} ms/step)")
    print(f"  bare loop {bare_s:.3f} s  ({1e3 * bare_s / args.steps:.2f} ms/step)")
    print(f"ratio fit / bare = {fit_s / bare_s:.3f} (goal <= 1.05)")
    if device.type == "cuda":
        n = count_syncs(ds, device)
        print(f"host synchronisations in one epoch of fit ({args.steps} steps): {n}")


if __name__ == "__main__":
    main()
