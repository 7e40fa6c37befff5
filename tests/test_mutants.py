"""benchmarks/mutants.py and its lists: every curated bug still applies to today's code.

The mutation runs themselves take minutes (`python benchmarks/mutants.py --curated`);
these checks take a second and fail as soon as the code moves away from a listed bug.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mutants():
    spec = importlib.util.spec_from_file_location("bench_mutants",
                                                  ROOT / "benchmarks" / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.mark.parametrize("name", ["curated.toml", "extra.toml"])
def test_every_listed_bug_applies_once_and_compiles(mutants, name):
    entries = mutants.load_curated(ROOT / "tests" / "mutants" / name)
    assert entries
    for m in entries:
        source = (ROOT / m.file).read_text(encoding="utf-8")
        assert source.count(m.old) == 1, f"{m.id}: the old text is gone from {m.file} " \
                                         "(or appears twice): update the entry"
        compile(source.replace(m.old, m.new), m.file, "exec")
        assert m.why and m.tests
        for t in m.tests:
            assert (ROOT / t).is_file(), f"{m.id}: no test file {t}"
        if m.first:
            assert m.first.split("::")[0] in m.tests


def test_the_curated_list_has_at_least_30_bugs_across_the_algorithm_modules(mutants):
    entries = mutants.load_curated()
    assert len(entries) >= 30
    files = {m.file for m in entries}
    for module in ("adapt/", "multitask.py", "train.py", "models.py", "features.py",
                   "data.py", "domains.py", "selfsup/", "transferability/", "transfer.py"):
        assert any(module in f for f in files), module


def test_modules_name_existing_sources_and_tests(mutants):
    for name, module in mutants.MODULES.items():
        for src in module.sources:
            assert (ROOT / src).exists(), (name, src)
        for t in module.tests:
            assert (ROOT / t).is_file(), (name, t)
    assert set(mutants.DEFAULT_MODULES) <= set(mutants.MODULES)
    files = mutants._module_files(["adapt"])["adapt"]
    assert "tl_course/adapt/grl.py" in files and all(f.endswith(".py") for f in files)


def test_equivalent_mutants_each_say_why(mutants):
    for name, entry in mutants.load_equivalents().items():
        assert name.startswith("tl_course.") and entry["why"].strip()


def test_equivalent_files_hold_their_own_module(mutants):
    """equivalent/MODULE.toml lists mutants of MODULE's sources only."""
    files = sorted(mutants.EQUIVALENT.glob("*.toml"))
    assert files
    for path in files:
        assert path.stem in mutants.MODULES, path
        prefixes = tuple(src.removesuffix(".py").rstrip("/").replace("/", ".")
                         for src in mutants.MODULES[path.stem].sources)
        for name in _names(path):
            assert name.startswith(prefixes), (path.name, name)


def _names(path):
    return {line.split('"')[1] for line in path.read_text().splitlines()
            if line.startswith("mutant = ")}


def test_the_command_line_lists_and_rejects(mutants, capsys):
    assert mutants.main(["--list"]) == 0
    assert "grl-removed" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        mutants.main(["nonsense_module"])
