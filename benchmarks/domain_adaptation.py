"""Domain adaptation from MNIST: every method against its own baseline, mean ± std over seeds.

    python benchmarks/domain_adaptation.py --profile cpu --seeds 0 1 2 [--readme]
    python benchmarks/domain_adaptation.py --select      # how the weights were chosen

Runs `tlc.adapt.run_method`, the very code notebook 04 runs, for each target domain
(MNIST-M and the UCI digits by default). Each row names its baseline (the same network,
optimiser, epochs and seeds without the adaptation) and the gain over it, and the proxy
A-distance of the model's features (0: the domains cannot be told apart, 2: perfectly
separable). Writes <out>/domain_adaptation.md; with --readme also the README's section
between `<!-- da:begin -->` and `<!-- da:end -->`.

--select trains the weighted methods with a few CORAL weights and scores them on
labelled target *validation* images (the first 300 target training images; the test set
is never used), the criterion notebook 04 names.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from torch.utils.data import TensorDataset

from tl_course.adapt import BASELINES, LABELS, METHODS, recipe_for, run_method
from tl_course.data import make_loader
from tl_course.device import get_device
from tl_course.domains import TARGETS, load_domains
from tl_course.profile import get_profile
from tl_course.train import accuracy

ROOT = Path(__file__).resolve().parents[1]
PAPER = {"source_only": 0.5225, "dann": 0.7666}  # Ganin et al. 2016, Table 2, MNIST -> MNIST-M
BEGIN, END = "<!-- da:begin -->", "<!-- da:end -->"
VALIDATION = 300  # labelled target training images used only to choose weights (--select)


def mean_std(values: list[float]) -> str:
    """'0.6600 ± 0.0360' (std over seeds, 0 for one seed)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def run_pair(target: str, profile_name: str, seeds: list[int]) -> dict[str, dict[str, list]]:
    """{method: {"acc": [...], "gain": [...], "pad": [...]}} over `seeds` for MNIST -> target."""
    profile, device = get_profile(profile_name), get_device()
    out: dict[str, dict[str, list]] = {m: {"acc": [], "gain": [], "pad": []} for m in METHODS}
    for seed in seeds:
        # The seed picks the MNIST halves and MNIST-M backgrounds as well as the weights.
        pair = load_domains(target, profile, seed=seed)
        results = {}
        for method in METHODS:
            source_only = results["bn_source_only"].model if method == "adabn" else None
            results[method] = r = run_method(method, pair, profile, device, seed,
                                             source_only=source_only)
            out[method]["acc"].append(r.target_acc)
            out[method]["pad"].append(r.proxy_a_distance(pair, device, seed))
            if method in BASELINES:
                out[method]["gain"].append(r.target_acc - results[BASELINES[method]].target_acc)
            print(f"{target} seed {seed} {method:18s} target {r.target_acc:.4f} "
                  f"proxy A-distance {out[method]['pad'][-1]:.3f}", flush=True)
    return out


def table(target: str, profile_name: str, seeds: list[int], res: dict[str, dict[str, list]],
          minutes: float, sizes: tuple[int, int]) -> str:
    """The Markdown table of one pair."""
    paper = target == "mnist_m"
    lines = [
        f"**MNIST -> {target}**, profile `{profile_name}` ({sizes[0]} source / {sizes[1]} "
        f"target training images), seeds {', '.join(map(str, seeds))}, {minutes:.1f} min.",
        "",
        "| method | baseline | target accuracy | gain over baseline | proxy A-distance |"
        + (" Ganin et al. 2016 |" if paper else ""),
        "|---|---|---|---|---|" + ("---|" if paper else ""),
    ]
    for m in METHODS:
        base = LABELS[BASELINES[m]] if m in BASELINES else "-"
        gain = (f"{statistics.mean(res[m]['gain']):+.3f} (min {min(res[m]['gain']):+.3f})"
                if m in BASELINES else "-")
        row = f"| {LABELS[m]} | {base} | {mean_std(res[m]['acc'])} | {gain} | " \
              f"{mean_std(res[m]['pad'])} |"
        lines.append(row + (f" {PAPER.get(m, '-')} |" if paper else ""))
    best = max(("source_only", "bn_source_only", "coral_source_only"),
               key=lambda m: statistics.mean(res[m]["acc"]))
    lines += ["", f"Best baseline of any network at its budget: {LABELS[best]}, "
                  f"{mean_std(res[best]['acc'])}."]
    return "\n".join(lines) + "\n"


def select(profile_name: str, seeds: list[int], weights: list[float]) -> str:
    """Validation accuracy of coral and dann_coral for each CORAL weight, mean over seeds."""
    profile, device = get_profile(profile_name), get_device()
    rows = ["| method | CORAL weight | target validation accuracy |", "|---|---|---|"]
    for method in ("coral", "dann_coral"):
        for w in weights:
            accs = []
            for seed in seeds:
                pair = load_domains("mnist_m", profile, seed=seed)
                x, y = pair.target.train.tensors
                val = make_loader(TensorDataset(x[:VALIDATION], y[:VALIDATION]), 512, device)
                recipe = dataclasses.replace(recipe_for(method), coral_trade_off=w)
                r = run_method(method, pair, profile, device, seed, recipe=recipe)
                accs.append(accuracy(r.model, val, device))
            rows.append(f"| {LABELS[method]} | {w:g} | {mean_std(accs)} |")
            print(rows[-1], flush=True)
    return "\n".join(rows) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write text to path through a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def replace_section(readme: str, body: str) -> str:
    """README text with the part between BEGIN and END replaced by body."""
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README.md needs the markers {BEGIN} and {END}")
    head, rest = readme.split(BEGIN, 1)
    return f"{head}{BEGIN}\n{body}{END}{rest.split(END, 1)[1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--targets", nargs="+", default=["mnist_m", "uci_digits"],
                        choices=TARGETS)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--readme", action="store_true", help="update README.md's section")
    parser.add_argument("--select", action="store_true",
                        help="choose CORAL's weight on target validation images instead")
    parser.add_argument("--weights", type=float, nargs="+",
                        default=[300.0, 1000.0, 3000.0, 10000.0])
    args = parser.parse_args(argv)
    if args.select:
        text = select(args.profile, args.seeds, args.weights)
        write_atomic(args.out / "domain_adaptation_select.md", text)
        print(text)
        return 0
    parts = []
    for target in args.targets:
        start = time.perf_counter()
        res = run_pair(target, args.profile, args.seeds)
        pair = load_domains(target, get_profile(args.profile), seed=args.seeds[0])
        parts.append(table(target, args.profile, args.seeds, res,
                           (time.perf_counter() - start) / 60,
                           (len(pair.source.train), len(pair.target.train))))
        print(parts[-1], flush=True)
    text = "\n".join(parts)
    write_atomic(args.out / "domain_adaptation.md", text)
    if args.readme:
        readme = ROOT / "README.md"
        write_atomic(readme, replace_section(readme.read_text(), text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
