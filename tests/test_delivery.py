"""Colab and Binder delivery: badges, install cells, dependency ranges, Binder files."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SLUG = PYPROJECT["project"]["urls"]["Repository"].removeprefix("https://github.com/")

# torch / torchvision pairs Colab has shipped (late 2024 to 2025): our ranges must admit them.
COLAB_PAIRS = [("2.5.1", "0.20.1"), ("2.6.0", "0.21.0"), ("2.8.0", "0.23.0")]


def test_slug_is_owner_slash_name():
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", SLUG), SLUG


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_colab_badge_points_at_this_notebook(path: Path):
    first = nbformat.read(path, as_version=4).cells[0].source
    url = f"https://colab.research.google.com/github/{SLUG}/blob/main/notebooks/{path.name}"
    assert f"]({url})" in first, f"{path.name}: badge must link to {url}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_install_cell_acts_only_on_colab_and_keeps_torch(path: Path):
    cell = nbformat.read(path, as_version=4).cells[1].source
    assert cell.splitlines()[0].startswith("#")  # says what it does
    code = "\n".join(ln for ln in cell.splitlines() if not ln.lstrip().startswith("#"))
    assert 'if "google.colab" in sys.modules:' in code
    body = code.split('if "google.colab" in sys.modules:', 1)[1]
    assert f"git+https://github.com/{SLUG}" in body
    assert "torch" not in body.replace("tl-course", ""), "never reinstall torch on Colab"
    assert "enable_custom_widget_manager" in body
    # Nothing but the import of sys runs outside the Colab branch.
    outside = code.split('if "google.colab" in sys.modules:', 1)[0].strip()
    assert outside == "import sys"


@pytest.mark.parametrize(("torch_v", "vision_v"), COLAB_PAIRS)
def test_dependency_ranges_admit_colab_torch(torch_v: str, vision_v: str):
    reqs = {Requirement(r).name: Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
    assert Version(torch_v) in reqs["torch"].specifier
    assert Version(vision_v) in reqs["torchvision"].specifier


def test_binder_environment_matches_the_conda_one():
    main = yaml.safe_load((ROOT / "environment.yml").read_text())
    binder = yaml.safe_load((ROOT / "binder" / "environment.yml").read_text())

    def deps(env: dict) -> tuple[list, list]:
        plain = [d for d in env["dependencies"] if isinstance(d, str)]
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        return plain, [p for p in pip if not p.startswith("-e")]

    assert deps(binder) == deps(main)
    assert binder["channels"] == main["channels"]


def test_binder_post_build_installs_the_package():
    post = ROOT / "binder" / "postBuild"
    assert post.stat().st_mode & 0o111, "postBuild must be executable"
    assert "pip install --no-deps ." in post.read_text()


def test_readme_has_binder_and_colab_badges():
    readme = (ROOT / "README.md").read_text()
    assert f"https://mybinder.org/v2/gh/{SLUG}/" in readme
    assert f"https://colab.research.google.com/github/{SLUG}/" in readme
