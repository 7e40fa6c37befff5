"""benchmarks/domain_adaptation.py: its table and the README section it writes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tl_course.adapt import BASELINES, LABELS, METHODS

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_da", ROOT / "benchmarks" /
                                                  "domain_adaptation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_names_each_baseline_and_the_paired_gain():
    bench = _bench()
    res = {m: {"acc": [0.5 + 0.01 * i, 0.52 + 0.01 * i], "gain": [], "pad": [1.5, 1.7]}
           for i, m in enumerate(METHODS)}
    for m, base in BASELINES.items():
        res[m]["gain"] = [a - b for a, b in zip(res[m]["acc"], res[base]["acc"], strict=True)]
    text = bench.table("mnist_m", "cpu", [0, 1], res, 1.0, (2000, 2000))
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()
            if line.startswith("| ") and "---" not in line}
    for m in METHODS:
        assert LABELS[m] in rows
    adabn = rows[LABELS["adabn"]]
    assert LABELS["bn_source_only"] in adabn
    gap = METHODS.index("adabn") - METHODS.index("bn_source_only")
    assert f"+{0.01 * gap:.3f} (min +{0.01 * gap:.3f})" in adabn
    assert "1.600 ± 0.141" in adabn  # proxy A-distance mean ± std of [1.5, 1.7]
    assert "0.7666" in rows[LABELS["dann"]]  # the paper's DANN figure on MNIST-M
    assert "Best baseline of any network" in text


def test_readme_section_is_replaced_between_markers_only():
    bench = _bench()
    text = f"intro\n{bench.BEGIN}\nold\n{bench.END}\nrest\n"
    assert bench.replace_section(text, "new\n") == f"intro\n{bench.BEGIN}\nnew\n{bench.END}\nrest\n"
    with pytest.raises(SystemExit, match="markers"):
        bench.replace_section("no markers", "x")


def test_readme_shows_both_pairs_from_the_benchmark():
    readme = (ROOT / "README.md").read_text()
    bench = _bench()
    section = readme.split(bench.BEGIN, 1)[1].split(bench.END, 1)[0]
    for target in ("mnist_m", "uci_digits"):
        assert f"**MNIST -> {target}**" in section
    for m in METHODS:
        assert f"| {LABELS[m]} |" in section
