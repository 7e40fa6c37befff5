"""Time every notebook in one profile and tabulate the numbers its run card recorded.

    python benchmarks/notebooks.py --profile cpu [--out runs/bench] [notebooks ...]

Writes <out>/results.md (a Markdown table the README quotes) and prints it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tl_course.cli import NotebookFailed, run_notebook

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    rows = ["| notebook | profile | device | seconds | metrics |", "|---|---|---|---|---|"]
    failed = False
    for path in paths:
        try:
            card = run_notebook(path, args.profile, args.out)
        except NotebookFailed as exc:
            rows.append(f"| {path.stem} | {args.profile} | - | - | FAILED: {exc} |")
            failed = True
            continue
        metrics = ", ".join(f"`{k}` {v:.4f}" for k, v in card["metrics"].items())
        if card["skipped"]:
            metrics += "; skipped: " + ", ".join(s["section"] for s in card["skipped"])
        cells = [path.stem, card["profile"], card["device"], str(card["seconds"]), metrics]
        rows.append("| " + " | ".join(cells) + " |")
    table = "\n".join(rows) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table)
    print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
