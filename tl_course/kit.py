"""The offline classroom kit: wheels, data, weights, slides and the course, with checksums.

Standard library only, and no imports from the rest of the package: `course.py` loads this
file by path to check a kit and install from it *before* torch or tl_course is installed.
The parts that need the installed course (fetching data and weights) live in `cli.py`.

Layout of a kit folder:

    manifest.json   what the kit holds, for which platforms and Pythons, and the SHA-256 and
                    size of every file (written last: a kit without it is unfinished)
    wheels/         every package the course needs, for `pip install --no-index --find-links`
    course/         the course's files (notebooks, tl_course, course.sh / course.py, README)
    data/           the datasets cache (TL_COURSE_DATA)
    weights/        torchvision's ImageNet weights (TORCH_HOME/hub/checkpoints)
    slides/         the built reveal.js decks (open offline in a browser)
    README.txt      how to install from it
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = 1
# PyTorch's own index of CPU-only wheels (Linux and Windows): about 200 MB for torch instead
# of the package index's CUDA build (about 3 GB with its NVIDIA libraries).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_PACKAGES = ("torch", "torchvision")
# Building the course from its source (pip install -e .) needs its build backend, offline too.
BUILD_REQUIREMENTS = ("setuptools>=64",)


class KitError(RuntimeError):
    """A kit that cannot be built, is incomplete or corrupt, or cannot be used here."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(root: Path, info: dict) -> Path:
    """Hash every file under `root` and write manifest.json (atomically) with `info`."""
    files = {p.relative_to(root).as_posix(): {"sha256": sha256(p), "size": p.stat().st_size}
             for p in _files(root)}
    manifest = {"format": FORMAT, **info, "files": files}
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", dir=root)
    with os.fdopen(fd, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(tmp, root / MANIFEST)
    return root / MANIFEST


def read_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise KitError(f"{root} is not a tl-course kit (no {MANIFEST}); build one with "
                       "`tl-course kit build DIR` on a machine with internet")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise KitError(f"{path} is damaged ({exc}); copy the kit again") from None
    if manifest.get("format") != FORMAT:
        raise KitError(f"{path} has format {manifest.get('format')!r}, this course reads "
                       f"{FORMAT}; rebuild the kit with this version of the course")
    return manifest


def check(root: Path) -> list[str]:
    """Problems with a (copied) kit: each missing, truncated or altered file, by name.

    An empty list means every file the manifest lists is present and intact.
    """
    root = Path(root)
    manifest = read_manifest(root)
    problems = []
    for rel, want in sorted(manifest["files"].items()):
        path = root / rel
        if not path.is_file():
            problems.append(f"missing: {rel}")
        elif path.stat().st_size != want["size"]:
            problems.append(f"truncated or changed: {rel} ({path.stat().st_size} bytes, "
                            f"expected {want['size']})")
        elif sha256(path) != want["sha256"]:
            problems.append(f"corrupt: {rel} (SHA-256 differs)")
    return problems


def require_intact(root: Path) -> dict:
    """The manifest of an intact kit; KitError naming the damaged files otherwise."""
    problems = check(root)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more"
                                           if len(problems) > 3 else "")
        raise KitError(f"the kit in {root} is damaged: {shown}. Copy it again from the "
                       "original (or rebuild it with `tl-course kit build`)")
    return read_manifest(root)


def platform_id(tag: str) -> str:
    """"linux-x86_64", "windows-x86_64", "macos-arm64" ... from a wheel platform tag."""
    tag = tag.lower()
    arch = "x86_64" if tag.endswith(("x86_64", "amd64")) else tag.rsplit("_", 1)[-1]
    arch = "arm64" if arch == "aarch64" else arch
    system = ("windows" if tag.startswith("win") else "macos" if tag.startswith("macosx")
              else "linux")
    return f"{system}-{arch}"


def this_platform() -> str:
    """This machine in `platform_id`'s terms."""
    system = {"win32": "windows", "darwin": "macos"}.get(sys.platform, "linux")
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "aarch64": "arm64"}.get(machine, machine)
    return f"{system}-{arch}"


def require_target(manifest: dict, here: str, python: str) -> None:
    """KitError unless the kit has wheels for this platform (`this_platform()`) and Python
    (e.g. "3.11")."""
    pythons = manifest.get("pythons", [])
    if python not in pythons:
        raise KitError(f"this kit has wheels for Python {', '.join(pythons)}, not {python}; "
                       f"run with one of those (PYTHON=python{pythons[0] if pythons else '3'}) "
                       f"or rebuild the kit with --python {python}")
    platforms = manifest.get("platforms", [])
    if here not in platforms:
        raise KitError(f"this kit has wheels for {', '.join(platforms)}, not for {here}; "
                       "rebuild it with --platform for this machine (see `tl-course kit "
                       "build --help`)")


def pip_download_commands(requirements: Sequence[str], dest: Path, platforms: Sequence[str],
                          pythons: Sequence[str], torch_index: str | None) -> list[list[str]]:
    """The `pip download` commands that fill `dest` with wheels for every target.

    `platforms` are wheel platform tags (e.g. manylinux_2_28_x86_64, win_amd64,
    macosx_14_0_arm64); an empty list means this machine. `torch_index` is an index URL for
    torch and torchvision on Linux / Windows (the CPU-only builds), or None for the default.
    """
    pip = [sys.executable, "-m", "pip", "download", "--dest", str(dest), "--only-binary=:all:",
           "--find-links", str(dest)]
    torch_reqs = [r for r in requirements if _name(r) in TORCH_PACKAGES]
    other = [r for r in requirements if _name(r) not in TORCH_PACKAGES]
    commands = []
    for python in pythons:
        abi = "cp" + python.replace(".", "")
        for tag in platforms or [""]:
            target = ["--python-version", python, "--implementation", "cp",
                      "--abi", abi, "--abi", "abi3", "--abi", "none"]
            target += ["--platform", tag] if tag else []
            # macOS wheels on the normal index are CPU / MPS builds already.
            mac = tag.startswith("macosx") or (not tag and sys.platform == "darwin")
            cpu_index = torch_index and not mac
            if cpu_index:
                # torch and its own dependencies from the CPU index first; the second command
                # then finds them in dest and does not fetch the CUDA build.
                commands.append(pip + target + ["--index-url", torch_index, *torch_reqs])
                commands.append(pip + target + [*other, *BUILD_REQUIREMENTS])
            else:
                commands.append(pip + target + [*requirements, *BUILD_REQUIREMENTS])
    return commands


def _name(requirement: str) -> str:
    for sep in "<>=!~;[ ":
        requirement = requirement.split(sep, 1)[0]
    return requirement.strip().lower().replace("_", "-")


def download_wheels(commands: Sequence[Sequence[str]],
                    run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> None:
    """Run the pip download commands; KitError with pip's last line when one fails."""
    for cmd in commands:
        print("  " + " ".join(cmd[3:]), flush=True)
        done = run(list(cmd), capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr or done.stdout or "").strip().splitlines()
            hint = ""
            if "--index-url" in cmd:
                hint = (" (is the PyTorch CPU index reachable? --torch-index default takes "
                        "torch from the normal package index instead)")
            raise KitError(f"pip download failed{hint}: {last[-1] if last else 'no output'}")


def copy_tree(src: Path, dest: Path, files: Iterable[Path] | None = None) -> int:
    """Copy `files` (default: all files) of `src` into `dest`, keeping relative paths.

    Each file is written to a temporary name and renamed, so nothing is left half-copied.
    Returns the number of files copied; files already present with the same content are
    skipped.
    """
    count = 0
    for path in sorted(files if files is not None else _files(src)):
        rel = path.relative_to(src)
        target = dest / rel
        if target.is_file() and target.stat().st_size == path.stat().st_size \
                and sha256(target) == sha256(path):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)
        count += 1
    return count


def readme_text(manifest_info: dict) -> str:
    pythons = ", ".join(manifest_info.get("pythons", []))
    platforms = ", ".join(manifest_info.get("platforms", []))
    missing = manifest_info.get("missing", [])
    lines = [
        "tl-course offline classroom kit",
        "",
        f"Wheels for Python {pythons} on {platforms}.",
        "Copy this whole folder to the laptop's disk first (not run from a read-only stick).",
        "",
        "Install and open the course, with no network:",
        "  Linux / macOS:  cd course && bash course.sh lab --kit ..",
        "  Windows:        cd course  then  py course.py lab --kit ..",
        "(from a clone of the course, give the kit's path: bash course.sh lab --kit /path/to/kit)",
        "",
        "Check a copied kit:  python course/course.py kit-check .   (or: tl-course kit check .)",
        "The slides are in slides/: open NN_slug.html in a browser.",
    ]
    if missing:
        lines += ["", "Not in this kit (the notebooks skip or replace these offline): "
                  + ", ".join(missing)]
    return "\n".join(lines) + "\n"
