"""Label efficiency on the digit split: scratch vs linear probe vs fine-tune, several seeds.

    python benchmarks/label_efficiency.py --profile cpu --seeds 5 --ks 1 5 10 25 50

Prints a Markdown table (mean +- std over seeds of target test accuracy) and writes it to
runs/bench/label_efficiency.md; the README's results section quotes it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import tl_course as tlc

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--seeds", type=int, default=None, help="default: the profile's")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10, 25, 50])
    parser.add_argument("--steps", type=int, default=None, help="default: the profile's")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    args = parser.parse_args(argv)

    session = tlc.start("02", profile=args.profile)
    profile, device = session.profile, session.device
    seeds = list(range(args.seeds or profile.seeds))
    steps = args.steps or profile.small_steps
    source, target = tlc.transfer.digit_split(tlc.load_digits("mnist", profile))
    model = tlc.transfer.source_model(profile, device, source)
    start = time.perf_counter()
    results = tlc.transfer.label_efficiency(model, target, args.ks, seeds, device, steps)
    table = tlc.transfer.results_table(results)
    header = (f"Target test accuracy, digits 5-9 from a 0-4 source; profile {profile.name}, "
              f"data: {source.source}; {len(seeds)} seeds, {steps} steps per run; "
              f"{time.perf_counter() - start:.0f}s on {device}.\n\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "label_efficiency.md").write_text(header + table + "\n")
    print(header + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
