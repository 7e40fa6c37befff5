"""environment.yml and pyproject.toml describe the same install; ranges stay Colab-friendly."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _conda_requirements() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    reqs: dict[str, str] = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for pip_req in dep.get("pip", []):
                if not pip_req.startswith("-e"):
                    reqs[_name(pip_req)] = pip_req.replace(" ", "")
        elif _name(dep) not in ("python", "pip"):
            reqs[_name(dep)] = dep.replace(" ", "")
    return reqs


def test_environment_yml_lists_the_same_dependencies_and_ranges():
    deps = {_name(r): r.replace(" ", "") for r in _pyproject()["project"]["dependencies"]}
    conda = _conda_requirements()
    assert set(conda) == set(deps), f"only in one file: {set(conda) ^ set(deps)}"
    for name, req in deps.items():
        assert conda[name] == req, f"{name}: pyproject {req!r} vs environment.yml {conda[name]!r}"


def test_environment_yml_installs_the_course_without_test_tools():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip_section and not any("[dev]" in p for p in pip_section)


def _floor(req: str) -> str | None:
    match = re.search(r">=\s*([0-9][0-9.]*)", req)
    return match.group(1) if match else None


def test_lowest_constraints_pin_every_declared_floor():
    """.ci/lowest.txt is what the lowest-versions run installs: every dependency (and dev
    tool) exactly at the floor pyproject.toml declares, so a floor that is not true fails there."""
    from packaging.requirements import Requirement

    meta = _pyproject()["project"]
    # The lowest run uses Python 3.11: requirements whose marker excludes it (tomli) are out.
    declared = {_name(r): _floor(r) for r in
                meta["dependencies"] + meta["optional-dependencies"]["dev"]
                if Requirement(r).marker is None
                or Requirement(r).marker.evaluate({"python_version": "3.11"})}
    pins = {}
    for line in (ROOT / ".ci" / "lowest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[_name(name)] = version
    assert set(pins) == set(declared), f"only in one: {set(pins) ^ set(declared)}"
    for name, floor in declared.items():
        assert floor is not None, f"{name} declares no floor"
        parts = [int(x) for x in floor.split(".")]
        pinned = [int(x) for x in pins[name].split(".")][:len(parts)]
        assert pinned == parts, f"{name}: floor {floor}, the lowest run pins {pins[name]}"


def test_no_exact_pins_of_colab_preinstalled_packages():
    for req in _pyproject()["project"]["dependencies"]:
        if _name(req) in {"torch", "torchvision", "numpy"}:
            assert "==" not in req and "<" not in req, f"{req}: Colab's version must satisfy it"


def test_python_floor_matches():
    meta = _pyproject()["project"]
    assert meta["requires-python"] == ">=3.10"
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python>=3.10" in env["dependencies"]


@pytest.mark.integration
def test_wheel_ships_the_reference_results(tmp_path):
    """Colab installs from a git URL (a wheel): failed claims quote the benchmark's results,
    so the JSON must be package data, not only present in a checkout."""
    import subprocess
    import sys
    import zipfile

    assert "reference_results.json" in _pyproject()["tool"]["setuptools"]["package-data"][
        "tl_course"]
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
           "-w", str(tmp_path), str(ROOT)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("tl_course-*.whl"))
    assert "tl_course/reference_results.json" in zipfile.ZipFile(wheel).namelist()
