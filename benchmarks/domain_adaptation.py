"""Domain adaptation MNIST -> target over several seeds: mean +- std accuracy per method.

    python benchmarks/domain_adaptation.py --profile cpu --seeds 0 1 2 [--target mnist_m]

Trains source-only, AdaBN, Deep CORAL, DANN and the train-on-target oracle with the
course's Recipe (the notebook's settings), prints a Markdown table and writes it to
<out>/domain_adaptation.md for the README.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from tl_course.adapt import METHODS, Recipe, run_method
from tl_course.device import get_device
from tl_course.domains import TARGETS, load_domains
from tl_course.profile import get_profile

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"source_only": "source-only", "adabn": "AdaBN", "coral": "Deep CORAL",
          "dann": "DANN", "oracle": "train on target (oracle)"}
# Ganin et al. 2016, Table 2 (MNIST -> MNIST-M, full MNIST).
PAPER = {"source_only": 0.5225, "dann": 0.7666}  # Ganin et al. 2016, MNIST -> MNIST-M


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", default="mnist_m", choices=TARGETS)
    parser.add_argument("--epochs", type=int, help="default: the recipe's epochs for the profile")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    args = parser.parse_args(argv)
    profile, device = get_profile(args.profile), get_device()
    recipe = Recipe()
    epochs = args.epochs or recipe.epochs(profile)
    acc: dict[str, list[float]] = {m: [] for m in METHODS}
    start = time.perf_counter()
    for seed in args.seeds:
        # The seed picks the MNIST halves and MNIST-M backgrounds as well as the weights.
        pair = load_domains(args.target, profile, seed=seed)
        for method in METHODS:
            # adabn trains its own source-only network with BatchNorm (the recipe's has none).
            result = run_method(method, pair, epochs, device, recipe, seed=seed)
            acc[method].append(result.target_acc)
            print(f"seed {seed} {method:12s} target accuracy {result.target_acc:.4f}", flush=True)
    minutes = (time.perf_counter() - start) / 60
    paper_col = args.target == "mnist_m"
    rows = [
        f"MNIST -> {args.target}, profile `{profile.name}` ({len(pair.source.train)} source / "
        f"{len(pair.target.train)} target training images, {epochs} epochs), device {device}, "
        f"seeds {', '.join(map(str, args.seeds))}, {minutes:.1f} min.",
        "",
        "| method | target accuracy (mean ± std) |" + (" Ganin et al. 2016 |" if paper_col else ""),
        "|---|---|" + ("---|" if paper_col else ""),
    ]
    for method in METHODS:
        row = f"| {LABELS[method]} | {_mean_std(acc[method])} |"
        rows.append(row + (f" {PAPER.get(method, '-')} |" if paper_col else ""))
    table = "\n".join(rows) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "domain_adaptation.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
