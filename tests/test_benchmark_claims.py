"""benchmarks/claims.py: aggregation over seeds, the Markdown table, the README section."""

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("bench_claims", ROOT / "benchmarks" / "claims.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load()


def _card(nb: str, seed: int, a: float, b: float, secs: float) -> dict:
    return {"notebook": f"{nb}.ipynb", "status": "ok", "profile": "cpu", "seed": seed,
            "seconds": secs, "metrics": {"a_acc": a, "b_acc": b},
            "claims": [{"name": "a_beats_b", "text": "A beats B.", "condition": "a - b >= margin",
                        "margin": 0.05, "numbers": {"a": a, "b": b}, "holds": True}]}


CARDS = [_card("01_x", 0, 0.90, 0.80, 60.0), _card("01_x", 1, 0.92, 0.89, 64.0),
         _card("01_x", 2, 0.95, 0.85, 62.0)]


def test_collect_counts_held_from_the_numbers():
    ref = bench.collect(CARDS, "cpu", [0, 1, 2])
    entry = ref["claims"]["a_beats_b"]
    # Seed 1's stored flag says True, but 0.92 - 0.89 < 0.05: recomputed, it did not hold.
    assert entry["held"] == 2 and entry["runs"] == 3
    assert entry["numbers"]["a"]["mean"] == pytest.approx(statistics.fmean([0.90, 0.92, 0.95]))
    assert entry["numbers"]["b"]["std"] == pytest.approx(statistics.stdev([0.80, 0.89, 0.85]))
    assert ref["metrics"]["a_acc"]["n"] == 3 and ref["metrics"]["a_acc"]["notebook"] == "01_x"
    assert ref["notebooks"]["01_x"]["seconds"]["mean"] == pytest.approx(62.0)
    json.dumps(ref)  # serialisable as the package's reference file


def test_markdown_table_shows_held_counts_and_spreads():
    table = bench.markdown(bench.collect(CARDS, "cpu", [0, 1, 2]))
    assert "| `a_beats_b`: A beats B. | 2 of 3 |" in table
    assert "| 01_x | 62 ± 2 | 2 of 3 |" in table
    assert "`a_acc` | 01 | 0.923 ± 0.025 |" in table


def test_update_readme_replaces_only_the_section():
    text = f"intro\n{bench.BEGIN}\nold table\n{bench.END}\noutro\n"
    new = bench.update_readme(text, "new table\n")
    assert new == f"intro\n{bench.BEGIN}\nnew table\n{bench.END}\noutro\n"
    with pytest.raises(SystemExit, match="markers"):
        bench.update_readme("no markers here", "x")


def test_readme_section_is_generated_from_the_reference_file():
    """The README's results are the benchmark's, not typed: the committed reference file
    regenerates exactly the section between the markers."""
    ref_path = ROOT / "tl_course" / "reference_results.json"
    ref = json.loads(ref_path.read_text())
    readme = (ROOT / "README.md").read_text()
    section = readme.split(bench.BEGIN, 1)[1].split(bench.END, 1)[0]
    assert section.strip() == bench.markdown(ref).strip()


def test_every_reference_claim_held_in_every_run():
    ref = json.loads((ROOT / "tl_course" / "reference_results.json").read_text())
    assert ref["profile"] == "cpu" and ref["seeds"][:3] == [0, 1, 2]
    assert ref["claims"], "no claims in the reference results"
    bad = {n: f"{c['held']} of {c['runs']}" for n, c in ref["claims"].items()
           if c["held"] != c["runs"]}
    assert bad == {}


def test_every_notebook_claim_is_in_the_reference():
    """A claim added to a notebook must have been measured over seeds by the benchmark."""
    import re

    ref = json.loads((ROOT / "tl_course" / "reference_results.json").read_text())
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        names = re.findall(r"\bclaim\(\s*\"([A-Za-z0-9_]+)\"", nb.read_text())
        missing = [n for n in names if n not in ref["claims"]]
        assert missing == [], f"{nb.name}: claims never benchmarked: {missing}"


def test_merge_keeps_notebooks_not_rerun_and_replaces_rerun_ones():
    """Rerunning one notebook must not drop the others' rows from the reference file."""
    old = bench.collect(CARDS + [_card("02_y", s, 0.7, 0.6, 30.0) for s in range(3)],
                        "cpu", [0, 1, 2])
    old["metrics"]["gone_acc"] = {"mean": 0.5, "std": 0.0, "n": 3, "notebook": "01_x"}
    new = bench.collect([_card("01_x", s, 0.99, 0.80, 50.0) for s in range(3)], "cpu", [0, 1, 2])
    merged = bench.merge(old, new)
    assert list(merged["notebooks"]) == ["01_x", "02_y"]
    assert merged["notebooks"]["01_x"]["seconds"]["mean"] == pytest.approx(50.0)
    assert merged["notebooks"]["02_y"] == old["notebooks"]["02_y"]
    assert merged["metrics"]["a_acc"]["mean"] == pytest.approx(0.99)  # the rerun's value
    assert "gone_acc" not in merged["metrics"]  # a rerun notebook's old rows are dropped
    assert merged["claims"]["a_beats_b"]["held"] == 3
    # Different seeds: nothing is mixed in.
    assert bench.merge(old, bench.collect(CARDS[:1], "cpu", [0])) == \
        bench.collect(CARDS[:1], "cpu", [0])
