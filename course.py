"""tl-course: the README's commands, for Linux, macOS and Windows (no bash needed).

    python course.py lab [--kit DIR]   set up .venv (first run) and open JupyterLab
    python course.py setup [--kit DIR] only set up .venv (e.g. preparing classroom laptops)
    python course.py test              set up .venv with the test tools; every unit test and
                                       notebook (smoke profile, offline)
    python course.py claims            every notebook in the cpu profile; fails if a claim fails
    python course.py mutants [--curated | MODULE...]
                                       plant bugs in the algorithm modules: the curated
                                       realistic ones (CI), or mutmut's (score per module)
    python course.py kit-check DIR     check a copied offline kit (before anything is installed)

On Windows: `py course.py lab`. `bash course.sh ...` runs this file. Standard library only:
it runs before anything is installed. Extra arguments go to JupyterLab / pytest / tl-course.
"""

# No __future__ import (annotations) and only quoted new-style annotations: this file
# must still parse on an old Python, to say in one line that it is too old.
import argparse
import glob
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
MIN_PYTHON = (3, 10)


def fail(message: str) -> None:
    print(f"tl-course: error: {message}", file=sys.stderr)
    sys.exit(1)


def load_kit_module():
    """tl_course/kit.py by path: the package itself imports torch, which is not there yet."""
    spec = importlib.util.spec_from_file_location("tl_course_kit", ROOT / "tl_course" / "kit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", *args], check=True)


def setup(venv: Path, extra: str = "", kit: "Path | None" = None,
          constraints: "Path | None" = None) -> Path:
    """Create `venv` and install the course (with `extra`, e.g. "[dev]") when the dependency
    list changed since the last install; from the kit's wheels, offline, when `kit` is given.

    Returns the venv's python.
    """
    python = venv_python(venv)
    if kit is not None:
        kitlib = load_kit_module()
        try:
            manifest = kitlib.require_intact(kit)
            here = f"{sys.version_info[0]}.{sys.version_info[1]}"
            kitlib.require_target(manifest, kitlib.this_platform(), here)
        except kitlib.KitError as exc:
            fail(str(exc))
    if not python.exists():
        print(f"creating {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    stamp = venv / ".tl-course-installed"
    key = (ROOT / "pyproject.toml").read_bytes() + extra.encode()
    key += (constraints.read_bytes() if constraints else b"")
    want = hashlib.sha256(key).hexdigest()
    if not stamp.exists() or stamp.read_text().strip() != want:
        print(f"installing tl-course and its dependencies into {venv} "
              "(first time: several minutes) ...", flush=True)
        # An already installed torch / torchvision inside the declared range is kept (e.g. a
        # CPU-only build installed first from the PyTorch index): pip replaces it only if needed.
        target = ["-e", f"{ROOT}{extra}"] + (["-c", str(constraints)] if constraints else [])
        if kit is not None:
            # Network off: every wheel, the build backend included, comes from the kit.
            pip(python, "install", "--quiet", "--no-index", "--find-links",
                str(Path(kit) / "wheels"), *target)
        else:
            pip(python, "install", "--quiet", "--upgrade", "pip")
            pip(python, "install", "--quiet", *target)
        stamp.write_text(want)
    if kit is not None:
        subprocess.run([str(python), "-m", "tl_course.cli", "kit", "install", str(kit)],
                       check=True)
    return python


def browser_deps() -> None:
    """The slide and JupyterLab tests drive a headless Chromium and build reveal.js from npm:
    installed here on Debian / Ubuntu as root (CI); elsewhere we say what to do."""
    missing = []
    if not os.access(os.environ.get("TL_COURSE_CHROMIUM", "/usr/bin/chromium"), os.X_OK):
        missing.append("chromium")
    if shutil.which("npm") is None:
        missing += ["nodejs", "npm"]
    if not missing:
        return
    if hasattr(os, "getuid") and os.getuid() == 0 and shutil.which("apt-get"):
        print(f"installing {' '.join(missing)} for the browser tests ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    else:
        print(f"note: the slide / JupyterLab tests need {' '.join(missing)} (e.g. sudo apt-get "
              f"install {' '.join(missing)}; or set TL_COURSE_CHROMIUM=/path/to/chromium); "
              "without them those tests fail.", file=sys.stderr)


def run(cmd: "list[str]", env: "dict[str, str] | None" = None) -> int:
    try:
        return subprocess.run(cmd, env=env, cwd=ROOT).returncode
    except KeyboardInterrupt:
        return 130


def main(argv: "list[str] | None" = None) -> int:
    if sys.version_info < MIN_PYTHON:
        fail(f"Python {'.'.join(map(str, MIN_PYTHON))} or newer is needed (this is "
             f"{sys.version.split()[0]}); run this file with a newer python")
    parser = argparse.ArgumentParser(prog="course.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["lab", "setup", "test", "claims", "mutants",
                                                "kit-check"])
    parser.add_argument("--kit", type=Path, help="lab: install from this offline kit")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv",
                        help="the virtual environment to use (default .venv)")
    parser.add_argument("--constraints", type=Path,
                        help="pip constraints for the install (e.g. .ci/lowest.txt)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "kit-check":
        if not rest:
            fail("name the kit's folder: python course.py kit-check DIR")
        kitlib = load_kit_module()
        try:
            problems = kitlib.check(Path(rest[0]))
        except kitlib.KitError as exc:
            fail(str(exc))
        for p in problems:
            print(p)
        print(f"{len(problems)} problem(s)" if problems else f"kit {rest[0]} intact")
        return 1 if problems else 0
    if args.kit is not None and args.command not in ("lab", "setup"):
        fail("--kit goes with lab or setup: python course.py lab --kit DIR")
    if args.command in ("lab", "setup"):
        python = setup(args.venv, "", kit=args.kit, constraints=args.constraints)
        if args.command == "setup":
            print(f"ready: {args.venv} (open the course with: python course.py lab)")
            return 0
        return run([str(python), "-m", "jupyterlab", str(ROOT / "notebooks"), *rest])
    full_mutants = args.command == "mutants" and "--curated" not in rest
    python = setup(args.venv, "[dev,mutants]" if full_mutants else "[dev]",
                   constraints=args.constraints)
    if args.command == "test":
        browser_deps()
        # Smoke profile: seconds per notebook, offline. One thread per worker so two notebook
        # kernels on two cores do not fight; loadscope keeps a notebook on one worker.
        env = {**os.environ, "TL_COURSE_PROFILE": "smoke", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
        lint = run([str(python), "-m", "ruff", "check", "course.py", "tl_course", "tests",
                    "benchmarks", "notebooks"], env)
        if lint:
            return lint
        return run([str(python), "-m", "pytest", "-n", "2", "--dist", "loadscope", *rest], env)
    if args.command == "mutants":
        # Mutation testing (benchmarks/mutants.py): each planted bug must fail a unit test.
        env = {**os.environ, "TL_COURSE_PROFILE": "smoke", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
        return run([str(python), str(ROOT / "benchmarks" / "mutants.py"), *rest], env)
    # claims: each notebook once in the cpu profile (offline: the 5,000-digit sample), with its
    # claims enforced. SEED picks the session seed (default 0). Two cores, one kernel.
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env.setdefault("OMP_NUM_THREADS", "2")
    notebooks = sorted(glob.glob(str(ROOT / "notebooks" / "[0-9][0-9]_*.ipynb")))
    return run([str(python), "-m", "tl_course.cli", "run", *notebooks, "--profile", "cpu",
                "--seed", os.environ.get("SEED", "0"), "--strict", "--out",
                str(ROOT / "runs" / "claims"), *rest], env)


if __name__ == "__main__":
    sys.exit(main())
