"""Reading a real-world image folder safely: one subfolder per class (ImageFolder layout).

Every image is opened and decoded once while scanning, so a corrupt or truncated file is
skipped and listed up front instead of crashing an epoch. Greyscale, RGBA, palette and
CMYK images become RGB; EXIF orientation is applied (a phone photo stands the right way).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class FolderError(ValueError):
    """The folder cannot make a classification task; the message says what to add."""


def load_rgb(path: str | os.PathLike):
    """Open an image as an upright RGB PIL image (EXIF orientation applied; transparency
    composited onto white). Raises OSError / ValueError for unreadable files."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.load()  # decode now: truncated files fail here, not mid-epoch
        img = ImageOps.exif_transpose(img)
        if img.mode.startswith("I"):  # 16/32-bit greyscale (scans, microscopy): rescale
            import numpy as np

            wide = np.asarray(img, dtype=np.float64)
            top = 65535.0 if wide.max() > 255 else 255.0
            img = Image.fromarray((wide / top * 255).round().clip(0, 255).astype(np.uint8), "L")
        # Alpha, or a transparent colour key (palette, RGB or L PNGs): composite onto white.
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return img.convert("RGB")


@dataclass
class FolderScan:
    """What `scan_folder` found: classes (sorted), usable images, and what it skipped."""

    root: Path
    classes: list[str]
    paths: list[Path]
    labels: list[int]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = Counter(self.labels)
        return {name: c[i] for i, name in enumerate(self.classes)}

    def imbalance_warning(self, ratio: float = 3.0) -> str:
        """A warning when the largest class has `ratio` times the images of the smallest."""
        counts = self.counts()
        big, small = max(counts.values()), min(counts.values())
        if small and big / small >= ratio:
            return (f"warning: classes are imbalanced ({big} vs {small} images): accuracy "
                    "alone flatters the big classes; read the per-class accuracy and the "
                    "majority baseline")
        return ""

    def summary(self) -> str:
        lines = [f"{len(self.paths)} images in {len(self.classes)} classes under {self.root}"]
        lines += [f"  {name:20s} {n}" for name, n in self.counts().items()]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s) that could not be read:")
            lines += [f"  {p} ({why})" for p, why in self.skipped]
        warning = self.imbalance_warning()
        if warning:
            lines.append(warning)
        return "\n".join(lines)


def _hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name in {"__MACOSX", "Thumbs.db", "desktop.ini"}


def scan_folder(root: str | os.PathLike, check_images: bool = True) -> FolderScan:
    """Find the classes (subfolders) and their images under `root`.

    Hidden files and folders and files that are not images (by suffix) are ignored;
    images that cannot be decoded are skipped and listed. Raises FolderError when the
    folder cannot make a task: missing, not in ImageFolder layout, one class only, or a
    class with fewer than 2 readable images.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FolderError(f"{root} is not a folder: give the folder that holds one subfolder "
                          "of images per class")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not _hidden(d))
    if not class_dirs:
        loose = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        hint = (f" ({len(loose)} images lie directly in it)" if loose else "")
        raise FolderError(f"{root} has no class subfolders{hint}: put each class's images "
                          f"in its own subfolder, e.g. {root}/cats/*.jpg, {root}/dogs/*.jpg")
    if len(class_dirs) < 2:
        raise FolderError(f"{root} has one class ({class_dirs[0].name}): a classifier needs "
                          "at least two; add a subfolder of images for another class")
    classes = [d.name for d in class_dirs]
    paths: list[Path] = []
    labels: list[int] = []
    skipped: list[tuple[Path, str]] = []
    for label, d in enumerate(class_dirs):
        for p in sorted(d.rglob("*")):
            if not p.is_file() or any(_hidden(part) for part in
                                      [Path(x) for x in p.relative_to(d).parts]):
                continue
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if check_images:
                try:
                    load_rgb(p)
                except Exception as exc:  # any decoder error means: skip and list it
                    skipped.append((p, f"{type(exc).__name__}: {exc}"[:120]))
                    continue
            paths.append(p)
            labels.append(label)
    counts = Counter(labels)
    few = [c for i, c in enumerate(classes) if counts[i] < 2]
    if few:
        raise FolderError(f"class(es) {', '.join(few)} have fewer than 2 readable images: "
                          "add images there (at least 2 per class; 20 or more to learn "
                          "anything useful)")
    return FolderScan(root, classes, paths, labels, skipped)


def stratified_split(labels: list[int], valid_pct: float, seed: int = 0
                     ) -> tuple[list[int], list[int]]:
    """(train, validation) indices with `valid_pct` of each class in validation (at least
    one image per class, and at least one left for training), reproducible by seed."""
    if not 0 < valid_pct < 1:
        raise ValueError(f"valid_pct must be between 0 and 1, got {valid_pct}")
    gen = torch.Generator().manual_seed(seed)
    y = torch.tensor(labels)
    train, valid = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)].tolist()
        n_val = min(len(idx) - 1, max(1, round(valid_pct * len(idx))))
        valid += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(valid)


def write_json_atomic(obj: object, path: str | os.PathLike) -> Path:
    """Write JSON to `path` atomically (temp file, then rename)."""
    from ..runcard import write_text_atomic

    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def save_uploads(files: Any, folder: str | os.PathLike, class_name: str) -> list[Path]:
    """Save uploaded files (`FileUpload.value`: ipywidgets 8's tuple of dicts with "name"
    and "content", or ipywidgets 7's dict by name) into folder/class_name/, each written
    atomically. Returns the paths."""
    name = class_name.strip()
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise FolderError(f"class name {class_name!r} cannot be a folder name: use letters, "
                          "digits, spaces, - or _")
    dest = Path(folder) / name
    dest.mkdir(parents=True, exist_ok=True)
    if isinstance(files, dict):  # ipywidgets 7: {name: {"content": bytes, ...}}
        files = [{"name": k, **v} for k, v in files.items()]
    saved = []
    for f in files:
        fname = Path(str(f["name"])).name  # never a path from the browser
        if Path(fname).suffix.lower() not in IMAGE_SUFFIXES:
            print(f"skipped {fname}: not an image file ({', '.join(IMAGE_SUFFIXES)})")
            continue
        fd, tmp = tempfile.mkstemp(prefix=f".{fname}.", dir=dest)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(bytes(f["content"]))
            os.replace(tmp, dest / fname)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)  # nothing half-written is left behind
            raise
        saved.append(dest / fname)
    return saved
