"""Claims: conditions evaluated on the numbers, recorded recomputably, failing only in cpu/gpu."""

import json
import os
import sys
from io import StringIO
from pathlib import Path

import nbformat
import pytest

import tl_course as tlc
from tl_course import claims
from tl_course.claims import ClaimError, claim, evaluate, failed, recheck, usually
from tl_course.cli import main
from tl_course.data import DATA_ENV
from tl_course.device import DEVICE_ENV
from tl_course.profile import PROFILE_ENV
from tl_course.runcard import RUNCARD_ENV, read
from tl_course.session import SEED_ENV, session_seed, start

# ----------------------------------------------------------------- the condition language


@pytest.mark.parametrize(("condition", "numbers", "expected"), [
    ("a - b >= margin", {"a": 0.9, "b": 0.8, "margin": 0.05}, True),
    ("a - b >= margin", {"a": 0.9, "b": 0.88, "margin": 0.05}, False),
    ("a - b >= margin", {"a": 0.85, "b": 0.8, "margin": 0.05}, 0.85 - 0.8 >= 0.05),
    ("abs(a - b) <= margin", {"a": 0.5, "b": 0.52, "margin": 0.03}, True),
    ("abs(a - b) <= margin", {"a": 0.5, "b": 0.56, "margin": 0.03}, False),
    ("max(a, b, c) - min(a, b, c) <= margin", {"a": 1, "b": 2, "c": 4, "margin": 2}, False),
    ("max(a, b, c) - min(a, b, c) <= margin", {"a": 1, "b": 2, "c": 3, "margin": 2}, True),
    ("a < margin * b", {"a": 0.1, "b": 0.3, "margin": 0.5}, True),
    ("a < margin * b", {"a": 0.2, "b": 0.3, "margin": 0.5}, False),
    ("a > b and c > b", {"a": 2, "b": 1, "c": 0}, False),
    ("a > b or c > b", {"a": 2, "b": 1, "c": 0}, True),
    ("not a > b", {"a": 2, "b": 1}, False),
    ("0 < a < 1", {"a": 1.5}, False),  # chained comparisons: every link must hold
    ("(a - b) / b >= margin", {"a": 1.2, "b": 1.0, "margin": 0.1}, True),
    ("-a <= b", {"a": 1, "b": -2}, False),
])
def test_evaluate_matches_python(condition, numbers, expected):
    assert evaluate(condition, numbers) is expected
    # An independent reference: Python itself on the same expression.
    assert eval(condition, {"abs": abs, "min": min, "max": max}, dict(numbers)) == expected


@pytest.mark.parametrize("condition", [
    "__import__('os').system('true')",  # calls beyond abs/min/max
    "a.real > 0",  # attribute access
    "[a][0] > 0",  # subscripts
    "a ** 2 > 0",  # power is not in the language
    "a == b",  # equality of floats is never a claim
])
def test_evaluate_rejects_anything_else(condition):
    with pytest.raises(ClaimError, match="unsupported"):
        evaluate(condition, {"a": 1.0, "b": 1.0})


def test_evaluate_names_a_missing_number():
    with pytest.raises(ClaimError, match=r"'c'.*pass c="):
        evaluate("a - c >= 0", {"a": 1.0})


def test_evaluate_must_compare():
    with pytest.raises(ClaimError, match="must compare"):
        evaluate("a - b", {"a": 1.0, "b": 0.5})


def test_evaluate_syntax_error_is_a_claim_error():
    with pytest.raises(ClaimError, match="cannot parse"):
        evaluate("a >= ", {"a": 1.0})


# ----------------------------------------------------------------- claim(): print and record


@pytest.fixture
def card(tmp_path):
    path = tmp_path / "nb.metrics.json"
    return path, {RUNCARD_ENV: str(path)}


def test_claim_that_holds_prints_one_line_and_records(card, capsys):
    path, env = card
    assert claim("cnn_beats_mlp", "The CNN beats the MLP.", "cnn - mlp >= margin",
                 cnn=0.98, mlp=0.91, margin=0.03, profile="cpu", env=env) is True
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "holds" in out[0] and "0.980" in out[0] and "0.910" in out[0]
    entry = read(path)["claims"][0]
    assert entry["name"] == "cnn_beats_mlp" and entry["holds"] is True
    assert entry["text"] == "The CNN beats the MLP."
    assert entry["numbers"] == {"cnn": 0.98, "mlp": 0.91} and entry["margin"] == 0.03
    assert recheck(entry) is True


def test_failed_claim_is_one_honest_line(card, capsys, monkeypatch):
    path, env = card
    ref = {"profile": "cpu", "seeds": [0, 1, 2], "claims": {"cnn_beats_mlp": {
        "held": 3, "runs": 3, "numbers": {"cnn": {"mean": 0.981, "std": 0.002},
                                          "mlp": {"mean": 0.912, "std": 0.004}}}}}
    monkeypatch.setattr(claims, "reference", lambda: ref)
    assert claim("cnn_beats_mlp", "The CNN beats the MLP.", "cnn - mlp >= margin",
                 cnn=0.93, mlp=0.91, margin=0.03, why="too few epochs", profile="cpu",
                 env=env) is False
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert "DID NOT HOLD" in line and "the CNN beats the MLP" in line  # what was not shown
    assert "3 of 3" in line and "0.981 ± 0.002" in line  # what it usually shows
    assert "too few epochs" in line  # the likely reason
    assert read(path)["claims"][0]["holds"] is False


def test_smoke_claims_are_recorded_but_never_fail(card, capsys):
    path, env = card
    assert claim("x", "A beats B.", "a > b", a=0.1, b=0.2, profile="smoke", env=env) is False
    assert "DID NOT HOLD" not in capsys.readouterr().out
    entry = read(path)["claims"][0]
    assert entry["holds"] is False and entry["profile"] == "smoke"
    assert failed({"profile": "smoke", "claims": [entry]}) == []
    assert failed({"profile": "cpu", "claims": [{**entry, "profile": "cpu"}]}) != []


def test_failed_recomputes_from_numbers_not_the_stored_flag():
    # A card edited (or a threshold changed) after the run: holds is recomputed.
    entry = {"name": "x", "text": "t", "condition": "a - b >= margin", "margin": 0.5,
             "numbers": {"a": 1.0, "b": 0.8}, "holds": True}
    assert [c["name"] for c in failed({"profile": "cpu", "claims": [entry]})] == ["x"]
    assert failed({"profile": "cpu", "claims": [{**entry, "margin": 0.1}]}) == []


def test_claim_profile_defaults_to_the_environment(card, monkeypatch):
    path, env = card
    claim("x", "t", "a > b", a=0.0, b=1.0, env={**env, PROFILE_ENV: "smoke"})
    assert read(path)["claims"][0]["profile"] == "smoke"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"a": float("nan"), "b": 0.5}, "not a finite number"),
    ({"a": 1.0, "margin_x": 0.0}, "'b'"),
])
def test_claim_bad_numbers(kwargs, match):
    with pytest.raises(ClaimError, match=match):
        claim("x", "t", "a > b", profile="cpu", env={}, **kwargs)


def test_claim_name_must_be_an_identifier():
    with pytest.raises(ClaimError, match="identifiers"):
        claim("not a name", "t", "a > 0", a=1.0, profile="cpu", env={})


def test_usually_without_reference_says_how_to_get_one():
    assert "benchmarks/claims.py" in usually("nothing_like_this", ref={})


def test_session_claim_passes_its_profile(monkeypatch, card):
    path, env = card
    monkeypatch.setenv(RUNCARD_ENV, str(path))
    session = start("01", profile="smoke", device="cpu", env={})
    session.claim("x", "t", "a > b", a=0.0, b=1.0)
    assert read(path)["claims"][0]["profile"] == "smoke"


# ----------------------------------------------------------------- seeds from outside


def test_session_seed_sources():
    assert session_seed(None, {}) == 0
    assert session_seed(None, {SEED_ENV: "7"}) == 7
    assert session_seed(3, {SEED_ENV: "7"}) == 3  # an explicit argument wins
    with pytest.raises(ValueError, match=r"TL_COURSE_SEED='x'.*whole number"):
        session_seed(None, {SEED_ENV: "x"})
    with pytest.raises(ValueError, match="0 or more"):
        session_seed(None, {SEED_ENV: "-1"})


def test_start_seeds_from_the_environment(card):
    import torch

    path, env = card
    s = start("01", profile="smoke", device="cpu", env={**env, SEED_ENV: "5"})
    a = torch.rand(3)
    torch.manual_seed(5)
    assert s.seed == 5 and torch.equal(a, torch.rand(3))  # really seeded with 5
    assert read(path)["session"] == {"seed": 5, "profile": "smoke"}


# ----------------------------------------------------------------- tl-course run --strict / --seed


def _notebook(path: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


def _run(tmp: Path, argv: list[str]) -> tuple[int, str, str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DATA_ENV, str(tmp / "data"))
        mp.setenv("OMP_NUM_THREADS", "1")
        for name in (RUNCARD_ENV, DEVICE_ENV, PROFILE_ENV, SEED_ENV):
            mp.delenv(name, raising=False)
        out, err = StringIO(), StringIO()
        mp.setattr(sys, "stdout", out)
        mp.setattr(sys, "stderr", err)
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


CLAIMS_NB = [
    "import tl_course as tlc\ns = tlc.start('01', device='cpu')",
    "s.claim('true_one', 'One beats zero.', 'a > b', a=1.0, b=0.0)\n"
    "s.claim('false_one', 'Zero beats one by a lot.', 'b - a >= margin', a=1.0, b=0.0, "
    "margin=0.5)\nprint('seed is', s.seed)",
]


@pytest.fixture(scope="module")
def claims_nb(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("claims")
    return tmp, _notebook(tmp / "nb.ipynb", *CLAIMS_NB)


@pytest.mark.integration
def test_strict_fails_naming_the_claim_in_cpu(claims_nb):
    tmp, nb = claims_nb
    out_dir = tmp / "cpu"
    code, out, err = _run(tmp, ["run", str(nb), "--profile", "cpu", "--out", str(out_dir),
                                "--strict", "--seed", "4"])
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "false_one" in lines[0] and "true_one" not in lines[0]
    assert "claims: 1 of 2 held" in out
    card = json.loads((out_dir / "nb.runcard.json").read_text())
    assert card["seed"] == 4
    assert {c["name"]: c["holds"] for c in card["claims"]} == {"true_one": True,
                                                               "false_one": False}
    for c in card["claims"]:
        assert {"name", "text", "holds", "numbers", "condition", "margin"} <= set(c)
    executed = nbformat.read(out_dir / "nb.ipynb", as_version=4)
    assert "seed is 4" in "".join(o.get("text", "") for c in executed.cells
                                  for o in c.get("outputs", []))


@pytest.mark.integration
def test_without_strict_a_failed_claim_is_reported_not_fatal(claims_nb):
    tmp, nb = claims_nb
    code, out, err = _run(tmp, ["run", str(nb), "--profile", "cpu", "--out", str(tmp / "lax")])
    assert code == 0 and err == ""
    assert "claim failed: false_one" in out


@pytest.mark.integration
def test_strict_smoke_never_fails(claims_nb):
    tmp, nb = claims_nb
    code, out, err = _run(tmp, ["run", str(nb), "--profile", "smoke", "--strict",
                                "--out", str(tmp / "smoke")])
    assert code == 0, err
    card = json.loads((tmp / "smoke" / "nb.runcard.json").read_text())
    assert card["seed"] == 0  # default seed, recorded


@pytest.mark.integration
def test_bad_seed_is_one_line(claims_nb, one_error_line):
    tmp, nb = claims_nb
    code, _, err = _run(tmp, ["run", str(nb), "--seed", "-2", "--out", str(tmp / "x")])
    assert code == 1 and "--seed" in one_error_line(err)


def test_tlc_exports_claim():
    assert tlc.claim is claim and os.path.basename(claims.__file__) == "claims.py"
