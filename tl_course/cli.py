"""The `tl-course` command: run notebooks headless with run cards, fetch data, doctor.

Every expected failure (bad profile, missing notebook, unknown dataset, no network,
a failing cell) ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .capstone.export import ExportError
from .capstone.folder import FolderError
from .claims import failed as failed_claims
from .claims import recheck as recheck_claim
from .data import (
    FETCHERS,
    DataUnavailableError,
    UnknownDatasetError,
    data_dir,
)
from .device import DeviceError, get_device, versions
from .distributed import DistributedError
from .kit import TORCH_CPU_INDEX, KitError
from .models import (
    BACKBONES,
    WeightsUnavailableError,
    fetch_weights,
    weights_cached,
    weights_intact,
)
from .profile import PROFILE_ENV, ProfileError, get_profile
from .runcard import RUNCARD_ENV, write_text_atomic
from .runcard import read as read_runcard
from .session import SEED_ENV


class NotebookFailed(RuntimeError):
    """A notebook raised an error in one of its cells."""


class CLIError(RuntimeError):
    """Bad command-line input, reported as one line."""


class ClaimsFailed(RuntimeError):
    """`--strict`: a claim did not hold in a cpu or gpu run."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + error
        self.exit(2, f"tl-course: error: {message} (see `{self.prog} --help`)\n")


def _failing_cell(nb: Any) -> tuple[int, str]:
    """Index (1-based, code cells only) and first source line of the cell with an error."""
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code_cells, start=1):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            first = next((ln for ln in cell.source.splitlines() if ln.strip()), "")
            return i, first.strip()[:60]
    return 0, ""


def run_notebook(path: Path, profile_name: str, out_dir: Path, timeout: int = 1800,
                 seed: int | None = None) -> dict:
    """Execute one notebook with `profile_name` (and `seed`, through TL_COURSE_SEED); write
    the executed copy and its run card.

    Returns the run card. Raises NotebookFailed (after writing both files) when a cell fails.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    if not path.is_file():
        raise CLIError(f"notebook not found: {path}")
    if path.suffix != ".ipynb":
        raise CLIError(f"expected a .ipynb notebook, got {path} (the paired .ipynb sits beside it)")
    nb = nbformat.read(path, as_version=4)
    if out_dir.resolve() == path.parent.resolve():
        raise CLIError(f"--out {out_dir} is the notebook's own folder: the executed copy would "
                       "overwrite the source; choose another folder, e.g. --out runs")
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = out_dir / f".{path.stem}.metrics.json"
    metrics_file.unlink(missing_ok=True)
    # The kernel gets its own environment: that is how profile and run card reach it,
    # without changing this process's.
    kernel_env = {**os.environ, PROFILE_ENV: profile_name, RUNCARD_ENV: str(metrics_file.resolve())}
    if seed is not None:
        kernel_env[SEED_ENV] = str(seed)
    # OpenMP threads that wait passively keep both cores' worth of speed on an idle laptop
    # but do not spin against each other when something else is running (3-5x slower).
    kernel_env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3",
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    start = time.perf_counter()
    error: str | None = None
    try:
        # The kernel's own stderr (transport warnings) would bury the one line that matters;
        # errors in cells still arrive through the notebook's outputs.
        client.execute(stderr=subprocess.DEVNULL, env=kernel_env)
    except CellExecutionError as exc:
        index, first = _failing_cell(nb)
        ename = getattr(exc, "ename", "Error")
        evalue = _ANSI.sub("", str(getattr(exc, "evalue", exc))).strip().splitlines()
        error = f"{path.name} failed in code cell {index} ({first}): {ename}: " + (
            evalue[0] if evalue else ""
        )
    except CellTimeoutError:
        error = f"{path.name}: a cell ran longer than --timeout {timeout}s; raise it or use a "
        error += "smaller profile"
    except DeadKernelError:
        error = f"{path.name}: the kernel died (out of memory?); try a smaller profile"
    except RuntimeError as exc:  # e.g. "Kernel didn't respond in 60 seconds"
        error = (f"{path.name}: the Jupyter kernel did not start ({exc}); check that ipykernel "
                 "is installed here and that the loopback network (127.0.0.1) is up")
    seconds = time.perf_counter() - start
    recorded = read_runcard(metrics_file)
    metrics_file.unlink(missing_ok=True)
    card = {
        "notebook": path.name,
        "status": "failed" if error else "ok",
        "profile": profile_name,
        "seed": recorded["session"].get("seed", seed),
        "device": str(get_device(env=kernel_env)),
        "versions": versions(),
        "seconds": round(seconds, 1),
        "metrics": recorded["metrics"],
        "skipped": recorded["skipped"],
        "claims": recorded["claims"],
    }
    if error:
        card["error"] = error
    write_text_atomic(out_dir / path.name, nbformat.writes(nb))
    write_text_atomic(out_dir / f"{path.stem}.runcard.json", json.dumps(card, indent=2) + "\n")
    if error:
        raise NotebookFailed(error)
    return card


def _cmd_run(args: argparse.Namespace) -> int:
    profile = get_profile(args.profile)  # validates before any kernel starts
    if args.seed is not None and args.seed < 0:
        raise CLIError(f"--seed must be 0 or more, got {args.seed}")
    paths = [Path(p) for p in args.notebooks]
    for p in paths:
        if not p.is_file():
            raise CLIError(f"notebook not found: {p}")
    broken: list[str] = []
    for p in paths:
        seed_note = f", seed {args.seed}" if args.seed is not None else ""
        print(f"running {p.name} (profile {profile.name}{seed_note}) ...", flush=True)
        card = run_notebook(p, profile.name, Path(args.out), args.timeout, seed=args.seed)
        shown = ", ".join(f"{k}={v:.4f}" for k, v in card["metrics"].items()) or "no metrics"
        print(f"  ok in {card['seconds']}s: {shown}")
        for s in card["skipped"]:
            print(f"  skipped: {s['section']} ({s['reason']})")
        claims = card["claims"]
        bad = failed_claims(card)
        if claims:
            held = sum(recheck_claim(c) for c in claims)
            print(f"  claims: {held} of {len(claims)} held"
                  + (" (smoke: recorded, never failed)" if profile.name == "smoke" else ""))
        for c in bad:
            print(f"  claim failed: {c['name']}: {c['text']}")
            broken.append(f"{p.stem}:{c['name']}")
    if broken and args.strict:
        raise ClaimsFailed(f"{len(broken)} claim(s) did not hold in the {profile.name} profile: "
                           f"{', '.join(broken)} (see the run cards in {args.out})")
    return 0


def fetchables() -> dict[str, Callable[[Path], Path]]:
    """Everything `tl-course fetch` can download: datasets, then ImageNet weights."""
    from .domains import fetch_svhn, fetch_usps
    from .photos import fetch_eurosat

    table: dict[str, Callable[[Path], Path]] = {
        **FETCHERS, "usps": fetch_usps, "svhn": fetch_svhn, "eurosat": fetch_eurosat,
    }
    for name in BACKBONES:
        table[name] = lambda _root, n=name: fetch_weights(n)
    return table


def cache_status(root: Path) -> dict[str, str]:
    """For each fetchable item: "cached", "corrupt" (fails its checksum) or "missing"."""
    from .data import mnist_cached, mnist_intact
    from .domains import svhn_cached, usps_cached
    from .photos import eurosat_cached, eurosat_intact

    def state(present: bool, intact: Callable[[], bool]) -> str:
        return "missing" if not present else ("cached" if intact() else "corrupt")

    # USPS and SVHN are single files that torchvision MD5-checks when it downloads them.
    status = {
        "mnist": state(mnist_cached(root), lambda: mnist_intact(root)),
        "usps": state(usps_cached(root), lambda: True),
        "svhn": state(svhn_cached(root), lambda: True),
        "eurosat": state(eurosat_cached(root), lambda: eurosat_intact(root)),
    }
    for name in BACKBONES:
        status[name] = state(weights_cached(name), lambda n=name: weights_intact(n))
    return status


def _cmd_fetch(args: argparse.Namespace) -> int:
    root = data_dir()
    table = fetchables()
    if args.list:
        for name, state in cache_status(root).items():
            print(f"{name:20s} {state}")
        print(f"datasets: {root}\nweights:  {Path(torch_hub_dir()) / 'checkpoints'}")
        return 0
    names = list(table) if args.all else args.names
    if not names:
        raise CLIError("name what to fetch, e.g. `tl-course fetch mnist`, or use --all / --list")
    unknown = [n for n in names if n not in table]
    if unknown:
        raise UnknownDatasetError(
            f"unknown name {', '.join(map(repr, unknown))}; fetchable: {', '.join(table)}"
        )
    for name in names:
        where = table[name](root)
        print(f"{name}: ready in {where}")
    return 0


def torch_hub_dir() -> str:
    """torchvision's weights cache root ($TORCH_HOME/hub)."""
    import torch

    return torch.hub.get_dir()


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import report

    lines, _ = report(cache_status)
    print("\n".join(lines))
    return 0


def _cmd_kit(args: argparse.Namespace) -> int:
    from . import classroom, kit

    root = Path(args.dir)
    weights_dir = Path(torch_hub_dir()) / "checkpoints"
    if args.action == "check":
        problems = kit.check(root)
        for p in problems:
            print(p)
        if problems:
            raise CLIError(f"{len(problems)} problem(s) in the kit {root}: copy it again")
        manifest = kit.read_manifest(root)
        print(f"kit {root} intact: {len(manifest['files'])} files, Python "
              f"{', '.join(manifest['pythons'])} on {', '.join(manifest['platforms'])}")
    elif args.action == "install":
        n_data, n_weights = classroom.install_caches(root, data_dir(), weights_dir)
        print(f"copied {n_data} dataset file(s) to {data_dir()} and {n_weights} weight "
              f"file(s) to {weights_dir}")
    else:
        pythons = args.python or [f"{sys.version_info[0]}.{sys.version_info[1]}"]
        index = args.torch_index or TORCH_CPU_INDEX
        index = None if index == "default" else index
        dest = classroom.build(
            root, repo=Path(args.repo), fetch=fetchables(), data_root=data_dir(),
            weights_dir=weights_dir, platforms=args.platform or [], pythons=pythons,
            torch_index=index, allow_missing=args.allow_missing, slides=not args.no_slides)
        print(f"kit ready in {dest}; copy the whole folder, then see {dest / 'README.txt'}")
    return 0


def _cmd_train_folder(args: argparse.Namespace) -> int:
    from .capstone import train_folder

    if not 0 < args.valid_pct < 1:
        raise CLIError(f"--valid-pct must be between 0 and 1 (e.g. 0.2), got {args.valid_pct}")
    if args.image_size is not None and args.image_size < 8:
        raise CLIError(f"--image-size must be 8 pixels or more, got {args.image_size}")
    if args.epochs is not None and args.epochs < 1:
        raise CLIError(f"--epochs must be 1 or more, got {args.epochs}")
    from .distributed import init_from_env, launched_by_torchrun, shutdown

    dist = None
    if launched_by_torchrun():  # torchrun --nproc-per-node N ... train-folder
        dist = init_from_env()
    try:
        result = train_folder(args.folder, args.out, backbone=args.backbone, mode=args.mode,
                              valid_pct=args.valid_pct, seed=args.seed, epochs=args.epochs,
                              image_size=args.image_size, profile=args.profile, dist=dist)
    finally:
        if dist is not None:
            shutdown(dist)
    if dist is None or dist.is_main:
        print(result.report())
        print(f"top losses: {result.out / 'top_losses.png'}; split: {result.out / 'split.json'}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import csv
    import io

    from .capstone import image_paths, load_export, predict_images
    from .device import get_device

    if args.top_k < 1:
        raise CLIError(f"--top-k must be 1 or more, got {args.top_k}")
    exported = load_export(args.model, get_device())
    try:
        paths = image_paths(args.images)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    if not paths:
        raise CLIError(f"no images found in {', '.join(args.images)}")
    rows = predict_images(exported, paths, top_k=args.top_k)
    for row in rows:
        shown = row.get("error") or ", ".join(f"{c} {p:.3f}" for c, p in row["top"])
        print(f"{row['path']}: {shown}")
    if len(rows) > 1 or any(Path(i).is_dir() for i in args.images):
        out = Path(args.out)
        write_text_atomic(out.with_suffix(".json"), json.dumps(rows, indent=2) + "\n")
        table = io.StringIO()
        w = csv.writer(table)
        w.writerow(["path", "prediction", "probability", "top_k", "error"])
        for r in rows:
            top = r.get("top") or [("", float("nan"))]
            w.writerow([r["path"], top[0][0], f"{top[0][1]:.4f}",
                        ";".join(f"{c}:{p:.4f}" for c, p in r.get("top", [])),
                        r.get("error", "")])
        write_text_atomic(out.with_suffix(".csv"), table.getvalue())
        print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.json')}")
    return 0 if all("error" not in r for r in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tl-course", description="Run, fetch and check the tl-course notebooks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="execute notebooks headless and write run cards")
    run.add_argument("notebooks", nargs="+", help="paths of .ipynb notebooks")
    run.add_argument("--profile", help="smoke, cpu or gpu (default: TL_COURSE_PROFILE or auto)")
    run.add_argument("--out", default="runs", help="folder for executed copies and run cards")
    run.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    run.add_argument("--seed", type=int, default=None,
                     help="session seed for the notebooks (TL_COURSE_SEED; default 0)")
    run.add_argument("--strict", action="store_true",
                     help="exit non-zero, naming them, when claims fail (cpu / gpu profiles)")
    run.set_defaults(func=_cmd_run)
    fetch = sub.add_parser("fetch", help="download datasets into the cache (TL_COURSE_DATA)")
    fetch.add_argument("names", nargs="*", help="what to fetch (see --list)")
    fetch.add_argument("--all", action="store_true", help="fetch everything the course uses")
    fetch.add_argument("--list", action="store_true", help="show what is cached")
    fetch.set_defaults(func=_cmd_fetch)
    doctor = sub.add_parser("doctor", help="environment summary and what is cached")
    doctor.set_defaults(func=_cmd_doctor)
    kit = sub.add_parser("kit", help="offline classroom kit: build, check, install its data")
    kit.add_argument("action", choices=["build", "check", "install"],
                     help="build DIR (needs internet), check a copied DIR, or install its "
                          "datasets and weights into this machine's caches")
    kit.add_argument("dir", help="the kit's folder")
    kit.add_argument("--platform", action="append", metavar="TAG",
                     help="wheel platform tag, repeatable: manylinux_2_28_x86_64, win_amd64, "
                          "macosx_14_0_arm64 (default: this machine)")
    kit.add_argument("--python", action="append", metavar="X.Y",
                     help="Python version to carry wheels for, repeatable (default: this one)")
    kit.add_argument("--torch-index", default=None,
                     help="index for torch / torchvision on Linux and Windows (default: the "
                          "PyTorch CPU index; 'default' takes the normal package index)")
    kit.add_argument("--allow-missing", action="store_true",
                     help="leave out datasets / weights that cannot be downloaded")
    kit.add_argument("--no-slides", action="store_true", help="leave the slides out")
    kit.add_argument("--repo", default=".", help="the course clone to take files from")
    kit.set_defaults(func=_cmd_kit)
    from .capstone.export import backbone_names
    from .capstone.training import MODES

    tf = sub.add_parser("train-folder", help="an image folder (one subfolder per class) to "
                                             "a trained, exported classifier")
    tf.add_argument("folder", help="folder with one subfolder of images per class")
    tf.add_argument("--out", default="model", help="folder for model.pt, model.json, "
                                                    "split.json, top_losses.png")
    tf.add_argument("--backbone", default="digits", choices=backbone_names(),
                    help="pretrained backbone (digits: the course's MNIST source model)")
    tf.add_argument("--mode", default="finetune", choices=MODES,
                    help="probe: frozen features + linear head; finetune: the 03 recipe")
    tf.add_argument("--valid-pct", type=float, default=0.2, help="validation share per class")
    tf.add_argument("--seed", type=int, default=0, help="split and training seed")
    tf.add_argument("--epochs", type=int, default=None, help="default: the profile's")
    tf.add_argument("--image-size", type=int, default=None,
                    help="pixels per side (default: 28 for digits, 224 for ImageNet models)")
    tf.add_argument("--profile", help="smoke, cpu or gpu (default: TL_COURSE_PROFILE or auto)")
    tf.set_defaults(func=_cmd_train_folder)
    pr = sub.add_parser("predict", help="classify images with an exported model")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--model", required=True, help="the folder train-folder exported to")
    pr.add_argument("--top-k", type=int, default=3, help="classes to show per image")
    pr.add_argument("--out", default="predictions",
                    help="for several images: writes OUT.csv and OUT.json")
    pr.set_defaults(func=_cmd_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tl-course` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, ProfileError, DeviceError, UnknownDatasetError, DataUnavailableError,
            WeightsUnavailableError, NotebookFailed, ClaimsFailed, KitError, FolderError,
            ExportError, DistributedError) as exc:
        print(f"tl-course: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tl-course: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
