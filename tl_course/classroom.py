"""`tl-course kit build / install`: assemble an offline classroom kit, and unpack its data.

The file format and the checks are in `kit.py` (standard library only, so that a kit can
be checked and installed from before anything else is); this module adds what needs the
installed course: fetching datasets and weights, and knowing where their caches are.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from . import kit


def course_requirements(package: str = "tl-course") -> list[str]:
    """The course's own dependencies (not its dev extra), as declared by the installed package."""
    from packaging.requirements import Requirement

    return [spec for spec in metadata.requires(package) or []
            if Requirement(spec).marker is None]


def tracked_files(repo: Path) -> list[Path]:
    """The files git tracks in `repo` (the course as a clone has it, without .venv or runs)."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise kit.KitError(f"{repo} is not a git clone of the course; build the kit from a "
                           "clone (git clone the repository, then run it there)") from None
    return [repo / rel for rel in out.split("\0") if rel and (repo / rel).is_file()]


def fetch_or_note(fetch: Mapping[str, Callable[[Path], Path]], data_root: Path,
                  allow_missing: bool) -> list[str]:
    """Fetch every item into the caches; return the names that could not be had (only with
    `allow_missing`, else the first failure is raised)."""
    missing = []
    for name, get in fetch.items():
        try:
            get(data_root)
            print(f"  {name}: cached", flush=True)
        except Exception as exc:  # each fetcher raises its own "unavailable" error
            if not allow_missing:
                raise kit.KitError(f"could not fetch {name} ({exc}); build the kit on a "
                                   "machine with internet, or pass --allow-missing") from None
            print(f"  {name}: not available, left out ({type(exc).__name__})", flush=True)
            missing.append(name)
    return missing


def build(dest: Path, *, repo: Path, fetch: Mapping[str, Callable[[Path], Path]],
          data_root: Path, weights_dir: Path, platforms: Sequence[str],
          pythons: Sequence[str], torch_index: str | None, allow_missing: bool = False,
          slides: bool = True,
          download: Callable[[Sequence[Sequence[str]]], None] = kit.download_wheels) -> Path:
    """Build the kit in a temporary folder beside `dest`, then rename it into place.

    `download` runs the pip commands (replaced in tests). Raises KitError for anything that
    stops a complete kit, and removes the partial folder.
    """
    dest = Path(dest)
    if dest.exists():
        raise kit.KitError(f"{dest} exists; choose a new folder (a kit is built whole)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        print("1/5 course files", flush=True)
        kit.copy_tree(repo, work / "course", tracked_files(repo))
        print("2/5 datasets and weights", flush=True)
        missing = fetch_or_note(fetch, data_root, allow_missing)
        if data_root.is_dir():
            kit.copy_tree(data_root, work / "data")
        if weights_dir.is_dir():
            kit.copy_tree(weights_dir, work / "weights")
        print("3/5 slides", flush=True)
        if slides:
            built = repo / "slides" / "_build"
            if not any(built.glob("*.html")):
                subprocess.run([sys.executable, str(repo / "slides" / "build.py")], check=True)
            # The decks, their styles, figures and reveal.js; not the test screenshots.
            deck_files = [p for p in built.rglob("*") if p.is_file() and (
                p.parent == built or p.relative_to(built).parts[0] in ("figures", "lib"))]
            kit.copy_tree(built, work / "slides", deck_files)
        print("4/5 wheels (pip download)", flush=True)
        wheels = work / "wheels"
        wheels.mkdir()
        download(kit.pip_download_commands(course_requirements(), wheels, platforms, pythons,
                                           torch_index))
        targets = [kit.platform_id(t) for t in platforms] or [kit.this_platform()]
        info = {"course_version": metadata.version("tl-course"),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "platforms": targets, "pythons": list(pythons),
                "torch_index": torch_index or "default", "missing": missing}
        (work / "README.txt").write_text(kit.readme_text(info))
        print("5/5 manifest and checksums", flush=True)
        kit.write_manifest(work, info)
        work.rename(dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dest


def install_caches(kit_root: Path, data_root: Path, weights_dir: Path) -> tuple[int, int]:
    """Copy a checked kit's datasets and weights into this machine's caches.

    Returns (data files, weight files) copied; files already there and identical are kept.
    """
    kit.require_intact(kit_root)
    kit_root = Path(kit_root)
    n_data = kit.copy_tree(kit_root / "data", data_root) if (kit_root / "data").is_dir() else 0
    n_weights = (kit.copy_tree(kit_root / "weights", weights_dir)
                 if (kit_root / "weights").is_dir() else 0)
    return n_data, n_weights
