"""The slide decks: built offline, opened in a real (headless) Chromium.

Needs Debian's `chromium` and Playwright for Python (`pip install playwright`; the
browser download `playwright install` is not used: the system Chromium is). When either
is missing these tests fail with a message saying what to install: they never skip.

The decks are built explicitly in the `smoke` profile (figures in seconds, offline) into
slides/_build/test-smoke/, so a cpu-profile build in slides/_build/ is never overwritten.
The numbers on the slides come from a results file these tests write (every metric the
decks name, each with a value of its own), so they check the substitution without
waiting for benchmarks/claims.py to have measured anything.
Screenshots of every title slide go to slides/_build/screenshots/NN_slug.png.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLIDES = ROOT / "slides"
TEST_BUILD = SLIDES / "_build" / "test-smoke"
SCREENSHOTS = SLIDES / "_build" / "screenshots"
REFERENCE = ROOT / "tl_course" / "reference_results.json"
MODULES = ["01", "02", "03", "04", "05", "06", "07", "08", "09"]
COMMAND = "python benchmarks/claims.py --profile cpu --seeds 0 1 2"


def _load_build():
    spec = importlib.util.spec_from_file_location("slides_build", SLIDES / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = _load_build()
DECKS = build.deck_sources()


def deck_placeholders(text: str) -> list[tuple[str, str]]:
    """(kind, argument) of every {{kind:argument}} in a deck."""
    return re.findall(r"\{\{([A-Za-z_]+):([^{}]*)\}\}", text)


def deck_metric_names() -> set[str]:
    """Every metric a deck quotes, through {{metric:NAME...}} or {{cmp:A:B}}."""
    names = set()
    for deck in DECKS:
        for kind, arg in deck_placeholders(deck.read_text(encoding="utf-8")):
            if kind == "metric":
                names.add(arg.split(":")[0])
            elif kind == "cmp":
                names.update(arg.split(":"))
    return names


def results_for(names) -> dict:
    """A results file in benchmarks/claims.py's format; every metric a distinct mean."""
    metrics = {name: {"mean": round(0.1013 + 0.0071 * i, 4), "std": round(0.0012 + 0.0001 * i, 4),
                      "n": 3, "notebook": "test"}
               for i, name in enumerate(sorted(names))}
    return {"profile": "cpu", "seeds": [0, 1, 2], "offline": True, "notebooks": {},
            "metrics": metrics, "claims": {}}


@pytest.fixture(scope="module")
def results_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("results") / "reference_results.json"
    path.write_text(json.dumps(results_for(deck_metric_names()), indent=1))
    return path


@pytest.fixture(scope="module")
def built(results_file) -> dict[str, Path]:
    """Build all decks once, smoke figures (reused when up to date), the test's numbers."""
    try:
        pages = build.build(TEST_BUILD, profile="smoke", log=lambda msg: None,
                            results=results_file)
    except build.BuildError as err:
        pytest.fail(f"slides/build.py failed: {err}")
    return {p.stem: p for p in pages}


def test_one_deck_per_module():
    assert [d.name[:2] for d in DECKS] == MODULES
    for deck in DECKS:
        assert build.count_slides(deck) >= 5, f"{deck.name} is too short to teach from"


def test_split_slides_matches_reveal_separator():
    text = "# a\n---\nb\n\n---\n## c\n----\n--- \nd"
    # Only a line of exactly three dashes separates; "----" and "--- " do not.
    assert len(build.split_slides(text)) == 3


def test_default_build_is_the_cpu_profile():
    # The build to teach from draws its figures in the cpu profile; smoke only when asked.
    assert inspect.signature(build.build).parameters["profile"].default == "cpu"


# --------------------------------------------------------------------------- numbers


def _expected(spec: str, entry: dict) -> str:
    """What {{metric:NAME:spec}} must show, written independently of build.py."""
    pm = spec.startswith("pm")
    digits = int(spec[-2]) if spec.endswith("f") else 3
    text = f"{entry['mean']:.{digits}f}".replace("-", "\N{MINUS SIGN}")
    return text + f"\u00a0±\u00a0{entry['std']:.{digits}f}" if pm else text


def test_metric_placeholders_are_filled_from_the_results_file(built, results_file):
    results = json.loads(results_file.read_text())
    for deck in DECKS:
        page = built[deck.stem].read_text(encoding="utf-8")
        assert "{{" not in page, f"{deck.name}: a placeholder was left in the page"
        for kind, arg in deck_placeholders(deck.read_text(encoding="utf-8")):
            if kind == "metric":
                name, _, spec = arg.partition(":")
                shown = _expected(spec, results["metrics"][name])
                assert shown in page, f"{deck.name}: {{{{metric:{arg}}}}} should show {shown}"
            elif kind == "results":
                assert "cpu-profile means over seeds 0, 1, 2, offline" in page


def test_every_deck_quoting_numbers_says_how_they_were_measured():
    for deck in DECKS:
        for number, slide in enumerate(build.split_slides(deck.read_text(encoding="utf-8")), 1):
            kinds = {kind for kind, _ in deck_placeholders(slide)}
            if kinds & {"metric", "cmp"}:
                assert "results" in kinds, f"{deck.name} slide {number}: no {{{{results:source}}}}"


def test_metric_formats():
    results = {"_path": "r.json", "metrics": {"acc": {"mean": 0.98765, "std": 0.00321}}}
    fill = lambda text: build.fill_results(text + " {{results:source}}", results, "t.md")
    assert fill("{{metric:acc}}").startswith("0.988 ")
    assert fill("{{metric:acc:pm}}").startswith("0.988\u00a0±\u00a00.003 ")
    assert fill("{{metric:acc:.1f}}").startswith("1.0 ")
    assert fill("{{metric:acc:pm.2f}}").startswith("0.99\u00a0±\u00a00.00 ")
    results["metrics"]["change"] = {"mean": -0.0142, "std": 0.006}
    assert fill("{{metric:change}}").startswith("\N{MINUS SIGN}0.014 ")
    with pytest.raises(build.BuildError, match="unknown format"):
        fill("{{metric:acc:percent}}")


def test_cmp_says_what_the_numbers_show():
    results = {"_path": "r.json", "metrics": {
        "dann": {"mean": 0.660, "std": 0.036}, "source": {"mean": 0.544, "std": 0.015},
        "adabn": {"mean": 0.514, "std": 0.018}, "coral": {"mean": 0.532, "std": 0.031}}}
    cmp = lambda a, b: build.compare_metrics(a, b, results, "t.md")
    assert cmp("dann", "source") == "above"
    assert cmp("adabn", "source") == "below"  # 0.030 apart, more than either spread
    assert cmp("coral", "source") == "within noise of"  # 0.012 apart, CORAL's std 0.031


def test_a_slide_with_numbers_but_no_source_is_an_error():
    results = {"_path": "r.json", "metrics": {"acc": {"mean": 0.9, "std": 0.01}}}
    text = "# deck\n\n---\n\n## result\n\nCNN {{metric:acc}}\n\n---\n\n{{results:source}}"
    with pytest.raises(build.BuildError, match=r"slide 2.*\{\{results:source\}\}"):
        build.fill_results(text, results, "t.md")


def test_unknown_metric_is_a_build_error_naming_it(tmp_path):
    used = sorted(deck_metric_names())
    assert used, "the decks quote no measured numbers"
    missing = used[0]
    path = tmp_path / "reference_results.json"
    path.write_text(json.dumps(results_for(set(used) - {missing})))
    # Checked before reveal.js or figures are touched: this fails in milliseconds.
    with pytest.raises(build.BuildError) as err:
        build.build(tmp_path / "out", profile="smoke", log=lambda msg: None, results=path)
    assert repr(missing) in str(err.value)
    assert COMMAND in str(err.value)


def test_missing_results_file_says_how_to_make_it(tmp_path):
    with pytest.raises(build.BuildError, match=re.escape(COMMAND)):
        build.build(tmp_path / "out", profile="smoke", log=lambda msg: None,
                    results=tmp_path / "absent.json")


def test_unknown_placeholder_is_an_error():
    with pytest.raises(build.BuildError, match="unrecognised placeholder"):
        build.render_deck("t.md", "# t\n\n{{metirc:acc}}", {}, build.TEMPLATE)


def recorded_metric_patterns() -> list[re.Pattern]:
    """What the notebooks record with tlc.record("name", ...): benchmarks/claims.py writes
    exactly these names. An f-string name (f"{method}_k{k}") becomes a pattern."""
    patterns = []
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        for f, name in re.findall(r'\brecord\(\s*(f?)"([^"]+)"', nb.read_text(encoding="utf-8")):
            parts = re.split(r"\{[^}]*\}", name) if f else [name]
            patterns.append(re.compile("[a-z0-9_]+".join(map(re.escape, parts)) + r"\Z"))
    return patterns


def test_decks_quote_only_measured_metrics():
    if REFERENCE.exists():  # once benchmarks/claims.py has run: exactly its names
        known = set(json.loads(REFERENCE.read_text())["metrics"])
        unknown = deck_metric_names() - known
        where = str(REFERENCE)
    else:  # before: names the notebooks record
        patterns = recorded_metric_patterns()
        unknown = {n for n in deck_metric_names() if not any(p.match(n) for p in patterns)}
        where = "the names notebooks/*.py record with tlc.record"
    assert not unknown, f"decks quote {sorted(unknown)}, not among {where}"


# A decimal, a percentage, or a ratio such as "14x" / "14×" (but not "28×28" or "5x5").
TYPED_NUMBER_RE = re.compile(
    r"(?<![\w.])(?:\d*\.\d+|\d+(?:\.\d+)?\s*%|\d+(?:\.\d+)?\s*[×x](?![\w\d]))")
# Numbers a deck may type by hand: settings and code, never results.
ALLOWED_NUMBERS = {
    # The discriminative learning-rate table shows the decay the notebook passes to
    # tlc.models.param_groups(decay=0.3): a setting chosen before any run.
    ("03_fine_tuning.md", "0.3"): "learning-rate decay, a setting",
    # The autograd example's code starts at w = 1.0; the gradient it prints is worked out
    # by hand beside it (-4 = 2 (1 - 3)), arithmetic rather than a measurement.
    ("01_neural_network_basics.md", "1.0"): "starting value in example code",
    # The temperatures notebook 06 tries (settings; the probe each gives is a placeholder).
    ("06_self_supervised_pretraining.md", "0.1"): "temperature, a setting",
    ("06_self_supervised_pretraining.md", "0.5"): "temperature, a setting",
    ("06_self_supervised_pretraining.md", "2.0"): "temperature, a setting",
}


def test_decks_type_no_result_numbers():
    used, typed = set(), []
    for deck in DECKS:
        text = deck.read_text(encoding="utf-8")
        text = re.sub(r"\{\{[^{}]*\}\}", " ", text)  # placeholders: filled from the runs
        text = re.sub(r"<[^>]*>", " ", text)  # markup (style="width:1.5em") is not text
        for hit in TYPED_NUMBER_RE.findall(text):
            key = (deck.name, hit.strip())
            if key in ALLOWED_NUMBERS:
                used.add(key)
            else:
                typed.append(f"{deck.name}: {hit!r}")
    assert not typed, ("numbers typed into decks (use {{metric:NAME}} or a figure): "
                       + ", ".join(typed))
    assert used == set(ALLOWED_NUMBERS), f"unused allow-list entries: {set(ALLOWED_NUMBERS) - used}"


# --------------------------------------------------------------------------- in a browser


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.refs.append((tag, value))


def test_built_html_names_no_network_url(built):
    for name, page in built.items():
        parser = _Refs()
        parser.feed(page.read_text(encoding="utf-8"))
        for tag, ref in parser.refs:
            assert not re.match(r"(?i)(https?:)?//", ref), f"{name}: <{tag}> loads {ref}"
            if tag in ("script", "link", "img"):
                assert (page.parent / ref).exists(), f"{name}: <{tag}> names missing {ref}"


@pytest.mark.parametrize("deck", DECKS, ids=[d.stem for d in DECKS])
def test_deck_renders_offline(deck, built, browser):
    page_file = built[deck.stem]
    page = browser.new_page()
    errors: list[str] = []
    requests: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("console", lambda msg: msg.type == "error" and errors.append(
        f"console error: {msg.text}"))
    page.on("requestfailed", lambda req: errors.append(
        f"request failed: {req.url} ({req.failure})"))
    page.on("request", lambda req: requests.append(req.url))
    try:
        page.goto(page_file.as_uri(), wait_until="load")
        page.wait_for_function("window.Reveal && Reveal.isReady()", timeout=20_000)
        page.wait_for_function(
            "Array.from(document.images).every(img => img.complete)", timeout=20_000)
        total = page.evaluate("Reveal.getTotalSlides()")
        images = page.evaluate(
            "Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.evaluate("Reveal.slide(0, 0)")
        page.screenshot(path=str(SCREENSHOTS / f"{deck.stem}.png"))
    finally:
        page.close()
    assert not errors, "\n".join(errors)
    assert total == build.count_slides(deck), (
        f"{deck.name}: reveal.js shows {total} slides, the source has "
        f"{build.count_slides(deck)}")
    broken = [src for src, width in images if not width]
    assert not broken, f"images that did not load: {broken}"
    figures = len(build.FIG_RE.findall(deck.read_text(encoding="utf-8")))
    assert len(images) >= figures
    remote = [url for url in requests if not url.startswith(("file://", "data:"))]
    assert not remote, f"requests that leave the machine: {remote}"
