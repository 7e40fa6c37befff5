"""Notebook sources (.py, jupytext percent) and the committed .ipynb agree, without outputs."""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def _as_percent(path: Path) -> str:
    return jupytext.writes(jupytext.read(path), fmt="py:percent")


def test_there_are_notebooks():
    assert SOURCES, "no notebooks/NN_slug.py sources found"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_ipynb_matches_its_py_source(source: Path):
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run jupytext --sync {source}"
    assert _as_percent(ipynb) == _as_percent(source), (
        f"{ipynb.name} differs from {source.name}: run `jupytext --sync {source}`"
    )


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_ipynb_is_committed_without_outputs_and_with_a_kernel(source: Path):
    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_house_style(source: Path):
    """Colab badge first, the install cell acts only on Colab, setup via tlc.start,
    every exercise check has a collapsed solution, and the notebook ends with 'What we saw'."""
    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    first, install, setup = nb.cells[0], nb.cells[1], nb.cells[3]
    slug = source.with_suffix(".ipynb").name
    assert "colab-badge.svg" in first.source and f"notebooks/{slug}" in first.source
    assert 'if "google.colab" in sys.modules' in install.source
    pip_args = re.search(r"\[sys\.executable, (.*?)\]", install.source, re.DOTALL)
    assert pip_args and "tl-course" in pip_args.group(1)
    assert "torch" not in pip_args.group(1), "never reinstall torch / torchvision on Colab"
    assert f'tlc.start("{source.name[:2]}"' in setup.source
    solutions = [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
    assert solutions, "no exercises with solutions"
    for cell in solutions:
        assert cell.metadata["jupyter"]["source_hidden"] is True
        assert "tlc.exercises.check_" in cell.source
    assert "## What we saw" in nb.cells[-1].source


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_seed_comes_from_outside(source: Path):
    """`tl-course run --seed N` must reach every experiment: no notebook fixes the session
    seed, and none re-seeds with a literal (which would hide the outside seed)."""
    text = source.read_text()
    assert not re.search(r"tlc\.start\([^)]*seed=", text), "tlc.start must not fix the seed"
    assert not re.search(r"seed_everything\(\d+\)", text), "seed from session.seed, not a literal"


# Notebooks whose stated results are all claims.
CLAIMED = ["01", "02", "03", "04", "05", "06", "07", "08", "09"]


@pytest.mark.parametrize("number", CLAIMED)
def test_results_are_stated_as_claims(number: str):
    source = next(p for p in SOURCES if p.name.startswith(number))
    names = re.findall(r"\bclaim\(\s*\"([A-Za-z0-9_]+)\"", source.read_text())
    assert len(names) >= 3, f"{source.name} states {len(names)} claims; at least 3 expected"
    assert len(names) == len(set(names)), "claim names must be unique within a notebook"
