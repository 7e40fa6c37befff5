"""Build every deck in slides/decks/ to reveal.js HTML that works offline.

    .venv/bin/python slides/build.py                    # all decks -> slides/_build/
    .venv/bin/python slides/build.py --refresh-figures  # redraw the result plots too

reveal.js comes from the npm package pinned in slides/package-lock.json: `npm ci` installs
it into slides/node_modules when it is missing, and its files are copied next to the
decks, so slides/_build/ is self-contained (copy it to a USB stick, open any .html file).
Nothing is loaded from a CDN; the build fails if a built page names a network URL in a
script, link or img tag.

A deck is Markdown: slides are separated by a line holding only `---`, speaker notes
start with `Note:`, and `{{fig:NAME}}` places the figure slides/figures.py draws as
NAME.png, captioned with the profile it came from.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
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


def render_deck(src: Path, meta: dict, template: str) -> str:
    text = src.read_text(encoding="utf-8")
    body = FIG_RE.sub(lambda m: figure_html(m.group(1), meta), text)
    # A textarea holds raw text: escaping keeps "<" and "&" literal, the browser unescapes.
    return (template.replace("{{title}}", html.escape(deck_title(text)))
                    .replace("{{markdown}}", html.escape(body, quote=False)))


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


def build(out: Path = BUILD, profile: str = "smoke", refresh_figures: bool = False,
          log=print) -> list[Path]:
    """Build every deck into `out`; returns the HTML files written."""
    start = time.perf_counter()
    sources = deck_sources()
    if not sources:
        raise BuildError(f"no decks found in {DECKS}")
    ensure_reveal(log)
    out.mkdir(parents=True, exist_ok=True)
    meta = ensure_figures(out, profile, refresh_figures, log)
    copy_assets(out)
    if (HERE / "diagrams").is_dir():
        shutil.copytree(HERE / "diagrams", out / "diagrams", dirs_exist_ok=True)
    written, items = [], []
    for src in sources:
        page = render_deck(src, meta, TEMPLATE)
        check_offline(page, src.name)
        dest = out / f"{src.stem}.html"
        dest.write_text(page, encoding="utf-8")
        written.append(dest)
        title = deck_title(src.read_text(encoding="utf-8"))
        items.append(f'<li><a href="{dest.name}">{html.escape(title)}</a></li>')
        log(f"  {dest.relative_to(out.parent)}: {count_slides(src)} slides")
    (out / "index.html").write_text(INDEX.format(items="".join(items)), encoding="utf-8")
    log(f"built {len(written)} decks in {time.perf_counter() - start:.1f} s -> {out}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the course's reveal.js decks (offline).")
    parser.add_argument("--out", type=Path, default=BUILD)
    parser.add_argument("--profile", default="smoke",
                        help="profile the result plots are drawn with (default: smoke)")
    parser.add_argument("--refresh-figures", action="store_true",
                        help="redraw the figures even when they are up to date")
    args = parser.parse_args(argv)
    try:
        build(args.out, args.profile, args.refresh_figures)
    except BuildError as err:
        print(f"slides: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
