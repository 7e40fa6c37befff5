"""How notebook 07's settings were chosen: on a validation split, never on test digits.

    python benchmarks/transfer_failures.py --profile cpu --seeds 0 1 2

The target's training digits (5-9) are split into a validation set (600 images) and a
pool the labelled images are drawn from; the target test digits are not loaded. For each
seed it prints, per source of the ladder and random init:
- probe accuracy at several k (many episodes) and fine-tuned accuracy at several budgets;
- the Kendall tau of each transferability score against the probe at k = 10;
then the bias experiment at the strong and the weak cue rate (flip rates on validation).
The notebook uses the k where the ladder's gradient is widest (3) next to 10, the short
budget where sources still differ (30 steps) and a long one where they have converged
(200), and the strong cue (on every source 0).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import TensorDataset

import tl_course as tlc
from tl_course import bias
from tl_course import transferability as tf
from tl_course.profile import get_profile
from tl_course.selfsup import classifier_from, episode_indices, train_few


def validation_split(ds: TensorDataset, n_val: int = 600, seed: int = 123
                     ) -> tuple[TensorDataset, TensorDataset]:
    """(pool, validation): a fixed random split of the target's training digits."""
    x, y = ds.tensors
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return (TensorDataset(x[perm[n_val:]], y[perm[n_val:]]),
            TensorDataset(x[perm[:n_val]], y[perm[:n_val]]))


def ladder(source, pool, val, device, seed: int, data_tag: str, ks, budgets) -> None:
    sources = tf.ladder_sources(source.train, device, data_tag=data_tag, seed=seed)
    models = {**sources, tf.RANDOM_INIT: tf.new_encoder(5, seed).to(device).eval()}
    res, feats = tf.measure_ladder(models, pool, val, device, ks=ks, probe_draws=20,
                                   finetune_k=10, budgets=budgets, finetune_draws=3, seed=seed)
    head = "".join(f"{'probe k=' + str(k):>12s}" for k in ks)
    head += "".join(f"{'ft ' + str(b):>9s}" for b in budgets)
    print(f"{'source':16s}{head}")
    for name in models:
        row = "".join(f"{res.mean('probe', name, k):12.3f}" for k in ks)
        row += "".join(f"{res.mean('finetune', name, b):9.3f}" for b in budgets)
        print(f"{name:16s}{row}")
    draws = episode_indices(pool.tensors[1], 10, 20, seed=seed)
    scores, _ = tf.score_sources(models, pool, feats, draws, device)
    for score, values in scores.items():
        have = list(values)
        tau = tf.rank_agreement([values[n] for n in have],
                                [res.mean("probe", n, 10) for n in have])["kendall"]
        print(f"  {score:9s} Kendall tau vs probe k=10: {tau:.2f}")


def bias_rates(source, pool, val, device, seed: int, data_tag: str) -> None:
    (idx,) = episode_indices(pool.tensors[1], 30, 1, seed=seed)
    tx, ty = pool.tensors[0][idx], pool.tensors[1][idx]
    vx, vy = val.tensors
    clean = tf.ladder_sources(source.train, device, data_tag=data_tag, seed=seed,
                              rungs=["upright"])["upright"]
    for rate, other in [(1.0, 0.0), (0.95, 0.01)]:
        cued = bias.cued_source(source.train, 0, rate, other, seed=seed)
        biased = tf.cached_source(f"biased_square0_r{rate}_o{other}", cued, device,
                                  data_tag=data_tag, seed=seed)
        runs = {"biased fixed": bias.FrozenProbe(biased, device).fit(tx, ty).predict,
                "clean fixed": bias.FrozenProbe(clean, device).fit(tx, ty).predict,
                "mitigated": bias.FrozenProbe(biased, device).fit(tx, ty, True).predict}
        for steps in (30, 200):
            model = train_few(classifier_from(biased, 5), TensorDataset(tx, ty), device,
                              steps=steps, lr=3e-3, views=None, seed=seed)
            runs[f"biased ft {steps}"] = bias.model_predict(model, device)
        text = ", ".join(f"{n} {bias.flip_report(p, vx, vy, 5).flip_rate:.3f}"
                         for n, p in runs.items())
        print(f"  cue on {rate:.0%} of 0s, {other:.0%} of others: flips {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    device = tlc.device.get_device()
    digits = tlc.load_digits("mnist", profile)
    source, target = tlc.transfer.digit_split(digits)
    pool, val = validation_split(target.train)
    data_tag = f"{'full' if 'full' in digits.source else 'sample'}{len(source.train)}"
    for seed in args.seeds:
        print(f"\nseed {seed} (validation: {len(val)} target training digits)")
        ladder(source, pool, val, device, seed, data_tag, ks=(1, 3, 5, 10),
               budgets=(30, 100, 200))
        bias_rates(source, pool, val, device, seed, data_tag)
    print("\nnotebook 07 uses k = 3 and 10, budgets of 30 and 200 steps, the cue on every 0")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
