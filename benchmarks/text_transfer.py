"""Transfer in text: sentiment of unseen words from k labels per class (notebook 09's table).

    python benchmarks/text_transfer.py --seeds 0 1 2 --ks 10 100 --episodes 10

Per seed: one family split of the VADER words (|valence| >= 1, in GloVe; Porter-stem
families on one side only; 300 validation words from their own families), then `episodes`
draws of k training words per class. Every method sees the same words and picks its
regularisation (and fine-tuning its learning rate) on the validation words. The score is
balanced accuracy on the test families. The table gives the mean over seeds of each seed's
episode mean, ± the standard deviation over seeds. Written to runs/bench/text_transfer.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from tl_course.device import get_device
from tl_course.text import finetune as ft
from tl_course.text import loaders, probes, splits

ROOT = Path(__file__).resolve().parents[1]
L2SP = 0.1  # chosen on validation words from {0.01, 0.1, 1}, at seed 0 only (see --l2sp)


def measure(seeds: list[int], ks: list[int], episodes: int, steps: int, l2sp: float,
            device: torch.device) -> dict[str, dict[int, list[float]]]:
    """Per method and k, one value per seed: the mean over that seed's episodes."""
    glove = loaders.load_glove()
    words = loaders.sentiment_words(loaders.load_vader(), glove)
    x, y = glove.rows(words.words), words.labels
    families = splits.stems(words.words)
    table: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    choices: dict[int, list[str]] = defaultdict(list)
    for seed in seeds:
        fam = splits.family_split(families, seed=seed)
        rnd = splits.random_split(len(words), seed=seed)
        noise = probes.random_vectors(len(x), x.shape[1], seed=seed)
        for k in ks:
            per: dict[str, list[float]] = defaultdict(list)
            for e in range(episodes):
                es = probes.episode_seed(seed, k, e)
                tr = splits.k_per_class(y, fam.train, k, seed=es)
                ep = ft.finetune_episode(x, y, tr, fam.val, fam.test, device, steps=steps,
                                         l2sp=l2sp, seed=seed)
                choices[k].append(ep.chosen)
                per["GloVe + logistic regression"].append(ep.probe.test)
                per["fine-tune, LR chosen on validation"].append(ep.chosen_test)
                per["fine-tune, LR 1e-3"].append(ep.runs["lr 0.001"].test)
                per["fine-tune, LR 1e-2"].append(ep.runs["lr 0.01"].test)
                per[f"fine-tune, LR 1e-2 + L2-SP {l2sp:g}"].append(ep.runs["L2-SP"].test)
                per["character n-grams (2-4)"].append(
                    probes.char_ngram_probe(words.words, y, tr, fam.val, fam.test).test)
                per["random vectors"].append(
                    probes.vector_probe(noise, y, tr, fam.val, fam.test).test)
                tr_r = splits.k_per_class(y, rnd.train, k, seed=es)
                per["character n-grams, random split"].append(
                    probes.char_ngram_probe(words.words, y, tr_r, rnd.val, rnd.test).test)
                per["GloVe + logistic regression, random split"].append(
                    probes.vector_probe(x, y, tr_r, rnd.val, rnd.test).test)
            for name, values in per.items():
                table[name][k].append(float(np.mean(values)))
    for k, chosen in choices.items():
        counts = {c: chosen.count(c) for c in sorted(set(chosen))}
        print(f"k={k}: learning rates chosen on validation: {counts}")
    return table


def l2sp_check(seed: int, k: int, episodes: int, steps: int, device: torch.device) -> None:
    """Validation balanced accuracy of L2-SP at LR 1e-2 for each strength (the choice)."""
    glove = loaders.load_glove()
    words = loaders.sentiment_words(loaders.load_vader(), glove)
    x, y = glove.rows(words.words), words.labels
    fam = splits.family_split(splits.stems(words.words), seed=seed)
    for alpha in (0.01, 0.1, 1.0):
        vals = []
        for e in range(episodes):
            tr = splits.k_per_class(y, fam.train, k, seed=probes.episode_seed(seed, k, e))
            ep = ft.finetune_episode(x, y, tr, fam.val, fam.test, device, lrs=(), steps=steps,
                                     l2sp=alpha, seed=seed)
            vals.append((ep.runs["L2-SP"].val, ep.probe.val))
        v = np.mean(vals, axis=0)
        print(f"L2-SP {alpha:g}, k={k}: validation {v[0]:.3f} (probe {v[1]:.3f})")


def markdown(table: dict[str, dict[int, list[float]]], ks: list[int]) -> str:
    head = "| method | " + " | ".join(f"k={k}" for k in ks) + " |\n"
    head += "|---|" + "---|" * len(ks) + "\n"
    for name, by_k in table.items():
        cells = []
        for k in ks:
            v = by_k[k]
            std = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.fmean(v):.3f} ± {std:.3f}")
        head += f"| {name} | " + " | ".join(cells) + " |\n"
    return head


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--l2sp", action="store_true", help="only compare L2-SP strengths")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = get_device()
    if args.l2sp:
        for k in args.ks:
            l2sp_check(args.seeds[0], k, args.episodes, args.steps, device)
        return 0
    start = time.perf_counter()
    table = measure(args.seeds, args.ks, args.episodes, args.steps, L2SP, device)
    header = (f"Word sentiment (VADER, |valence| >= 1, in GloVe 6B 50d), balanced accuracy on "
              f"test families; seeds {', '.join(map(str, args.seeds))}, {args.episodes} "
              f"episodes per seed and k, fine-tuning {args.steps} Adam steps; "
              f"{time.perf_counter() - start:.0f}s on {device}.\n\n")
    text = header + markdown(table, args.ks)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "text_transfer.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
