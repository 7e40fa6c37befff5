"""The slide decks: built offline, opened in a real (headless) Chromium.

Needs Debian's `chromium` and Playwright for Python (`pip install playwright`; the
browser download `playwright install` is not used: the system Chromium is). When either
is missing these tests fail with a message saying what to install: they never skip.
Screenshots of every title slide go to slides/_build/screenshots/NN_slug.png.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLIDES = ROOT / "slides"
SCREENSHOTS = SLIDES / "_build" / "screenshots"
MODULES = ["01", "02", "03", "04", "05"]


def _load_build():
    spec = importlib.util.spec_from_file_location("slides_build", SLIDES / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = _load_build()
DECKS = build.deck_sources()


@pytest.fixture(scope="module")
def built() -> dict[str, Path]:
    """Build all decks once (figures are reused when up to date)."""
    try:
        pages = build.build(log=lambda msg: None)
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
