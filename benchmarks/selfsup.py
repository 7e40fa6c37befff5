"""How notebook 06's settings were chosen: on a validation split, never on the test digits.

The 4,000 offline training digits are split 3,000 / 1,000. Pretraining sees all 4,000
without labels (never a test image); k-shot episodes are drawn from the 3,000 and scored on
the 1,000 validation digits. For SimCLR: views and temperature; for the augmented
from-scratch baseline (tuned as fairly): learning rate and steps.

    python benchmarks/selfsup.py            # a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from tl_course import selfsup as ss
from tl_course.data import mnist_sample
from tl_course.features import extract_features

SIMCLR_CANDIDATES = {
    "default views, t=0.5": (ss.Views(), 0.5),
    "default views, t=0.2": (ss.Views(), 0.2),
    "gentle shift, wider crop, t=0.5": (ss.CHOSEN_VIEWS, ss.CHOSEN_TEMPERATURE),
    "gentle shift, wider crop, t=0.2": (ss.CHOSEN_VIEWS, 0.2),
}
SCRATCH_CANDIDATES = {f"lr {lr:g}, {steps} steps": (lr, steps)
                      for lr, steps in [(1e-3, 300), (1e-3, 600), (3e-3, 300), (3e-3, 600),
                                        (3e-3, 1200), (1e-2, 1200), (3e-3, 2400)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=ss.PRETRAIN_STEPS)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--only", choices=["simclr", "scratch"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    device = torch.device("cpu")
    train, _ = mnist_sample()  # the test split is not loaded at all
    x, y = train.tensors
    pool, val = TensorDataset(x[:3000], y[:3000]), TensorDataset(x[3000:], y[3000:])
    draws = {k: ss.episode_indices(y[:3000], k, args.episodes, seed=0) for k in (5, 10)}

    print(f"SimCLR, {args.steps} steps, linear probe on the validation digits "
          f"(mean of {args.episodes} episodes):")
    for name, (views, t) in SIMCLR_CANDIDATES.items() if args.only != "scratch" else []:
        start = time.perf_counter()
        model, _ = ss.pretrain("simclr", x, device, steps=args.steps, seed=0, views=views,
                               temperature=t)
        f_pool = extract_features(model.encoder, DataLoader(pool, batch_size=512), device)
        f_val = extract_features(model.encoder, DataLoader(val, batch_size=512), device)
        accs = {k: sum(ss.probe_episodes(f_pool, f_val, d)) / len(d) for k, d in draws.items()}
        print(f"  {name:34s} k=5 {accs[5]:.3f}  k=10 {accs[10]:.3f}  "
              f"({time.perf_counter() - start:.0f}s)", flush=True)

    print("Augmented from-scratch baseline (chosen views), k=10, 3 episodes:")
    for name, (lr, steps) in SCRATCH_CANDIDATES.items() if args.only != "simclr" else []:
        start = time.perf_counter()
        accs = ss.train_episodes(ss.DigitEncoder, pool, val, draws[10][:3], device,
                                 steps=steps, lr=lr, views=ss.CHOSEN_VIEWS)
        print(f"  {name:34s} {sum(accs) / len(accs):.3f}  ({time.perf_counter() - start:.0f}s)",
              flush=True)


if __name__ == "__main__":
    main()
