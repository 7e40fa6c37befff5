"""Build every deck in slides/decks/ to reveal.js HTML that works offline.

    .venv/bin/python slides/build.py                    # all decks -> slides/_build/ (cpu profile)
    .venv/bin/python slides/build.py --refresh-figures  # redraw the result plots too
    .venv/bin/python slides/build.py --profile smoke    # quick figures (seconds, not for teaching)

The default build is the one to show a class: figures drawn in the `cpu` profile (minutes
on a laptop), numbers from the cpu-profile benchmark. `--profile smoke` draws tiny,
rough figures fast; the tests build that way.

reveal.js comes from the npm package pinned in slides/package-lock.json: `npm ci` installs
it into slides/node_modules when it is missing, and its files are copied next to the
decks, so slides/_build/ is self-contained (copy it to a USB stick, open any .html file).
Nothing is loaded from a CDN; the build fails if a built page names a network URL in a
script, link or img tag.

A deck is Markdown: slides are separated by a line holding only `---`, speaker notes
start with `Note:`. Placeholders, all filled at build time:

- `{{fig:NAME}}`: the figure slides/figures.py draws as NAME.png, captioned with the
  profile it came from.
- `{{metric:NAME}}`: the mean of metric NAME in tl_course/reference_results.json (written
  by `python benchmarks/claims.py --profile cpu --seeds 0 1 2`), 3 decimals;
  `{{metric:NAME:pm}}` gives "mean ± std"; a format spec such as `{{metric:NAME:.0f}}` or
  `{{metric:NAME:pm.2f}}` changes the decimals.
- `{{cmp:A:B}}`: "above", "below" or "within noise of", comparing metric A's mean with B's:
  a difference no larger than the larger of their two standard deviations (over the
  benchmark's seeds) reads "within noise of". A sentence built on it stays true when the
  numbers change.
- `{{results:source}}`: where the numbers come from (profile, seeds, offline), read from
  the same file. A slide that uses `metric` or `cmp` must carry it, so every number says
  how it was measured.

No number on a slide is typed by hand: it comes from the benchmark's file or from a
figure. A metric the file does not hold is an error that names it and the command that
measures it.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import html
import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DECKS = HERE / "decks"
BUILD = HERE / "_build"
NODE_MODULES = HERE / "node_modules"
REVEAL = NODE_MODULES / "reveal.js"
# What the decks use from the package, copied to _build/lib/reveal.js/.
REVEAL_PARTS = ("dist", "plugin/markdown", "plugin/notes", "plugin/highlight", "plugin/zoom")
SEPARATOR = "---"
FIG_RE = re.compile(r"\{\{fig:([A-Za-z0-9_]+)\}\}")
# Every {{kind:...}} placeholder; the kinds below are the ones a deck may use.
PLACEHOLDER_RE = re.compile(r"\{\{([A-Za-z_]+):([^{}]*)\}\}")
RESULT_KINDS = ("metric", "cmp", "results")
METRIC_SPEC_RE = re.compile(r"^(pm)?(\.[0-9]f)?$")
# Written by benchmarks/claims.py into the package (tl_course.claims.REFERENCE_FILE).
REFERENCE_FILE = "reference_results.json"
BENCHMARK_COMMAND = "python benchmarks/claims.py --profile cpu --seeds 0 1 2"
NETWORK_RE = re.compile(
    r"<(?:script|link|img|source|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//",
    re.IGNORECASE,
)


class BuildError(RuntimeError):
    """The decks cannot be built; the message says why and what to do."""


# --------------------------------------------------------------------------- decks


def deck_sources() -> list[Path]:
    """The deck sources, NN_slug.md, in course order."""
    return sorted(DECKS.glob("[0-9][0-9]_*.md"))


def split_slides(text: str) -> list[str]:
    """The slides of a deck: the text between lines that hold only `---`.

    Mirrors reveal.js's markdown separator (a line of exactly three dashes), so the count
    here is the count reveal.js shows.
    """
    slides, current = [], []
    for line in text.splitlines():
        if line.strip() == SEPARATOR and line == line.rstrip():
            slides.append("\n".join(current))
            current = []
        else:
            current.append(line)
    slides.append("\n".join(current))
    return slides


def count_slides(path: Path) -> int:
    return len(split_slides(path.read_text(encoding="utf-8")))


def deck_title(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return "tl-course"


def figure_html(name: str, meta: dict) -> str:
    info = meta.get(name)
    if info is None:
        raise BuildError(f"a deck uses {{{{fig:{name}}}}} but slides/figures.py draws no {name}")
    caption = (f"tl_course, profile <b>{meta['_profile']}</b> "
               f"({info['device']}) · slides/figures.py")
    return (f'<figure class="result"><img src="figures/{name}.png" alt="{name}">'
            f"<figcaption>{caption}</figcaption></figure>")


def render_deck(name: str, text: str, meta: dict, template: str) -> str:
    """The HTML page of deck `name` from its text (results already filled, see fill_results)."""
    body = FIG_RE.sub(lambda m: figure_html(m.group(1), meta), text)
    leftover = re.search(r"\{\{[^\n]{0,60}", body)
    if leftover:
        raise BuildError(f"{name}: unrecognised placeholder {leftover.group(0)!r}; decks use "
                         "{{fig:NAME}}, {{metric:NAME}}, {{metric:NAME:pm}}, {{cmp:A:B}} and "
                         "{{results:source}}")
    # A textarea holds raw text: escaping keeps "<" and "&" literal, the browser unescapes.
    return (template.replace("{{title}}", html.escape(deck_title(text)))
                    .replace("{{markdown}}", html.escape(body, quote=False)))


# --------------------------------------------------------------------------- results


def default_results_path() -> Path:
    """tl_course/reference_results.json: this checkout's, else the installed package's.

    The package is located with importlib (find_spec), not imported: importing tl_course
    would load torch just to find a file.
    """
    local = HERE.parent / "tl_course"
    if local.is_dir():
        return local / REFERENCE_FILE
    spec = importlib.util.find_spec("tl_course")
    if spec is not None and spec.origin:
        return Path(spec.origin).parent / REFERENCE_FILE
    return local / REFERENCE_FILE


def uses_results(text: str) -> bool:
    """Whether a deck quotes measured numbers (metric, cmp or results placeholders)."""
    return any(kind in RESULT_KINDS for kind, _ in PLACEHOLDER_RE.findall(text))


def load_results(path: Path) -> dict:
    """The benchmark's file ({"profile", "seeds", "offline", "metrics": {...}, ...})."""
    path = Path(path)
    if not path.exists():
        raise BuildError(f"the decks quote measured numbers, but {path} does not exist: run "
                         f"`{BENCHMARK_COMMAND}` to measure them")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BuildError(f"{path} is not valid JSON ({exc}): run `{BENCHMARK_COMMAND}` to "
                         "write it again") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise BuildError(f"{path} has no \"metrics\" table: run `{BENCHMARK_COMMAND}` to "
                         "write it again")
    data["_path"] = str(path)
    return data


def metric_entry(name: str, results: dict, where: str) -> dict:
    """Metric `name`'s {"mean", "std", ...}, or a BuildError naming it and the fix."""
    source = results.get("_path", "the results file")
    entry = results["metrics"].get(name)
    if not isinstance(entry, dict) or "mean" not in entry:
        near = difflib.get_close_matches(name, list(results["metrics"]), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise BuildError(f"{where} uses metric {name!r}, which {source} does not "
                         f"hold{hint}: run `{BENCHMARK_COMMAND}` to measure it")
    # A single run has no spread: a missing or null std counts as 0.
    entry = {**entry, "std": 0.0 if entry.get("std") is None else entry["std"]}
    for key in ("mean", "std"):
        value = entry[key]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise BuildError(f"{where}: metric {name!r} has {key} {value!r} in {source}, "
                             f"not a number: run `{BENCHMARK_COMMAND}`")
    return entry


def format_metric(name: str, spec: str, results: dict, where: str) -> str:
    """{{metric:NAME[:SPEC]}}: the mean (3 decimals), or "mean ± std" with SPEC pm."""
    match = METRIC_SPEC_RE.match(spec)
    if match is None:
        raise BuildError(f"{where}: {{{{metric:{name}:{spec}}}}} has an unknown format "
                         f"{spec!r}; use pm, .Nf or pm.Nf (N decimals)")
    entry = metric_entry(name, results, where)
    fmt = match.group(2) or ".3f"
    # A true minus sign (U+2212), and no-break spaces so "0.916 ± 0.016" never wraps.
    text = format(entry["mean"], fmt).replace("-", "\u2212")
    if match.group(1):
        text += "\u00a0±\u00a0" + format(entry["std"], fmt)
    return text


def compare_metrics(a: str, b: str, results: dict, where: str) -> str:
    """{{cmp:A:B}}: "above" / "below" when A's and B's means differ by more than the larger
    of their standard deviations, else "within noise of"."""
    ea, eb = metric_entry(a, results, where), metric_entry(b, results, where)
    diff = ea["mean"] - eb["mean"]
    if abs(diff) <= max(ea["std"], eb["std"]):
        return "within noise of"
    return "above" if diff > 0 else "below"


def results_source(results: dict) -> str:
    """{{results:source}}: how the numbers were measured, read from the file itself."""
    seeds = [str(s) for s in results.get("seeds", [])]
    over = (f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(seeds)}"
            if seeds else "unknown seeds")
    offline = ", offline" if results.get("offline") else ""
    return (f"{results.get('profile', '?')}-profile means over {over}{offline} "
            "(± std over the same seeds) · benchmarks/claims.py")


def fill_results(text: str, results: dict | None, where: str) -> str:
    """Replace metric, cmp and results placeholders; leave {{fig:...}} for later.

    Every slide that quotes a metric (metric or cmp) must also say where it comes from
    ({{results:source}}): a number without its profile and seeds does not teach.
    """
    for number, slide in enumerate(split_slides(text), start=1):
        kinds = {kind for kind, _ in PLACEHOLDER_RE.findall(slide)}
        if kinds & {"metric", "cmp"} and "results" not in kinds:
            raise BuildError(f"{where}, slide {number}: quotes measured numbers without saying "
                             "how they were measured; add {{results:source}} to the slide")
    if not uses_results(text):
        return text
    if results is None:
        raise BuildError(f"{where} quotes measured numbers but no results were loaded")

    def replace(match: re.Match) -> str:
        kind, arg = match.group(1), match.group(2)
        if kind == "metric":
            name, _, spec = arg.partition(":")
            return format_metric(name, spec, results, where)
        if kind == "cmp":
            a, _, b = arg.partition(":")
            if not a or not b or ":" in b:
                raise BuildError(f"{where}: {match.group(0)!r} needs two metric names, "
                                 "{{cmp:A:B}}")
            return compare_metrics(a, b, results, where)
        if kind == "results":
            if arg != "source":
                raise BuildError(f"{where}: unknown {match.group(0)!r}; the only one is "
                                 "{{results:source}}")
            return results_source(results)
        return match.group(0)  # {{fig:...}} is filled once the figures are drawn

    return PLACEHOLDER_RE.sub(replace, text)


TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{{title}} · tl-course</title>
<link rel="stylesheet" href="lib/reveal.js/dist/reset.css">
<link rel="stylesheet" href="lib/reveal.js/dist/reveal.css">
<link rel="stylesheet" href="lib/reveal.js/dist/theme/white.css">
<link rel="stylesheet" href="lib/reveal.js/plugin/highlight/monokai.css">
<link rel="stylesheet" href="course.css">
</head>
<body>
<div class="reveal"><div class="slides">
<section data-markdown data-separator="^---$" data-separator-notes="^Note:">
<textarea data-template>
{{markdown}}
</textarea>
</section>
</div></div>
<script src="lib/reveal.js/dist/reveal.js"></script>
<script src="lib/reveal.js/plugin/markdown/markdown.js"></script>
<script src="lib/reveal.js/plugin/notes/notes.js"></script>
<script src="lib/reveal.js/plugin/highlight/highlight.js"></script>
<script src="lib/reveal.js/plugin/zoom/zoom.js"></script>
<script>
Reveal.initialize({
  hash: true, slideNumber: "c/t", center: true, width: 1280, height: 800,
  plugins: [RevealMarkdown, RevealNotes, RevealHighlight, RevealZoom]
});
</script>
</body>
</html>
"""

INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tl-course slides</title>
<link rel="stylesheet" href="course.css"></head>
<body class="index"><h1>tl-course slides</h1><ol>{items}</ol>
<p>Offline: every deck loads reveal.js from lib/. Press <kbd>S</kbd> in a deck for speaker
notes, <kbd>Esc</kbd> for the overview.</p></body></html>
"""


# --------------------------------------------------------------------------- reveal.js


def ensure_reveal(log=print) -> Path:
    """reveal.js from npm (slides/package-lock.json), installed when missing."""
    if (REVEAL / "dist" / "reveal.js").exists():
        return REVEAL
    npm = shutil.which("npm")
    if npm is None:
        raise BuildError("reveal.js is not installed and npm is missing: install Node.js "
                         "(e.g. `apt-get install nodejs npm`), then run `npm ci` in slides/")
    cmd = [npm, "ci" if (HERE / "package-lock.json").exists() else "install",
           "--no-audit", "--no-fund"]
    log(f"installing reveal.js: {' '.join(cmd[1:])} (in slides/)")
    proc = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True)
    if proc.returncode != 0 or not (REVEAL / "dist" / "reveal.js").exists():
        raise BuildError(f"`npm {cmd[1]}` in slides/ failed (needs the npm registry once):\n"
                         + proc.stderr[-2000:])
    return REVEAL


def copy_assets(out: Path) -> None:
    lib = out / "lib" / "reveal.js"
    if lib.exists():
        shutil.rmtree(lib)
    for part in REVEAL_PARTS:
        shutil.copytree(REVEAL / part, lib / part,
                        ignore=shutil.ignore_patterns("*.map", "*.esm.js"))
    shutil.copy2(REVEAL / "LICENSE", lib / "LICENSE")
    shutil.copy2(HERE / "course.css", out / "course.css")


# --------------------------------------------------------------------------- figures


def figures_key(profile: str) -> str:
    """Changes when figures.py or the profile changes (then the figures are redrawn)."""
    digest = hashlib.sha256((HERE / "figures.py").read_bytes()).hexdigest()[:16]
    return f"{profile}:{digest}"


def ensure_figures(out: Path, profile: str, refresh: bool, log=print) -> dict:
    """Draw the figures unless the ones in `out` already match figures.py and profile."""
    fig_dir = out / "figures"
    meta_file = fig_dir / "figures.json"
    if not refresh and meta_file.exists():
        meta = json.loads(meta_file.read_text())
        if meta.get("_key") == figures_key(profile) and all(
            (fig_dir / f"{name}.png").exists() for name in meta if not name.startswith("_")
        ):
            log(f"figures: up to date ({profile} profile), --refresh-figures redraws them")
            return meta
    sys.path.insert(0, str(HERE))
    import figures  # noqa: PLC0415  (imports torch: only when figures are drawn)

    log(f"figures: drawing with tl_course, profile {profile}")
    written = figures.make_figures(fig_dir, profile, log=log)
    device = figures.tlc.get_device().type
    meta = {"_key": figures_key(profile), "_profile": profile}
    meta.update({name: {"file": p.name, "device": device} for name, p in written.items()})
    meta_file.write_text(json.dumps(meta, indent=1))
    return meta


# --------------------------------------------------------------------------- build


def check_offline(page: str, name: str) -> None:
    hit = NETWORK_RE.search(page)
    if hit:
        raise BuildError(f"{name} would load {hit.group(0)!r} from the network")


def build(out: Path = BUILD, profile: str = "cpu", refresh_figures: bool = False,
          log=print, results: Path | None = None) -> list[Path]:
    """Build every deck into `out`; returns the HTML files written.

    `profile` is the one the figures are drawn with (cpu: the build to teach from; smoke:
    seconds, for tests). `results` is the benchmark's file the numbers come from (default
    tl_course/reference_results.json); it is read, and every placeholder checked, before
    anything slow happens.
    """
    start = time.perf_counter()
    sources = deck_sources()
    if not sources:
        raise BuildError(f"no decks found in {DECKS}")
    texts = {src: src.read_text(encoding="utf-8") for src in sources}
    data = None
    if any(uses_results(text) for text in texts.values()):
        data = load_results(default_results_path() if results is None else results)
        log(f"numbers: {data['_path']} ({results_source(data)})")
    filled = {src: fill_results(text, data, src.name) for src, text in texts.items()}
    ensure_reveal(log)
    out.mkdir(parents=True, exist_ok=True)
    meta = ensure_figures(out, profile, refresh_figures, log)
    copy_assets(out)
    if (HERE / "diagrams").is_dir():
        shutil.copytree(HERE / "diagrams", out / "diagrams", dirs_exist_ok=True)
    written, items = [], []
    for src in sources:
        page = render_deck(src.name, filled[src], meta, TEMPLATE)
        check_offline(page, src.name)
        dest = out / f"{src.stem}.html"
        dest.write_text(page, encoding="utf-8")
        written.append(dest)
        items.append(f'<li><a href="{dest.name}">{html.escape(deck_title(texts[src]))}</a></li>')
        log(f"  {dest.name}: {count_slides(src)} slides")
    (out / "index.html").write_text(INDEX.format(items="".join(items)), encoding="utf-8")
    log(f"built {len(written)} decks in {time.perf_counter() - start:.1f} s -> {out}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the course's reveal.js decks (offline).")
    parser.add_argument("--out", type=Path, default=BUILD)
    parser.add_argument("--profile", default="cpu",
                        help="profile the result plots are drawn with (default: cpu, the "
                             "build to teach from; smoke: seconds, rough, for tests)")
    parser.add_argument("--refresh-figures", action="store_true",
                        help="redraw the figures even when they are up to date")
    parser.add_argument("--results", type=Path, default=None,
                        help="the benchmark's results file the numbers on the slides come "
                             f"from (default: tl_course/{REFERENCE_FILE}, written by "
                             f"`{BENCHMARK_COMMAND}`)")
    args = parser.parse_args(argv)
    try:
        build(args.out, args.profile, args.refresh_figures, results=args.results)
    except BuildError as err:
        print(f"slides: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
