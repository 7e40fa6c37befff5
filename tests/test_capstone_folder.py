"""The capstone's folder side, checked against independent references: the demo folder
writer (byte for byte against a bare re-implementation), load_rgb's rescaling of wide
greyscale and its transparency, scan_folder's ignored names and skip reasons, save_uploads'
atomic writes, the stratified split at its default seed, and the JSON / summary text.

Everything is tiny: the demo folder is built from a fake 250-digit MNIST sample (the real
one takes over a second to load), blended into MNIST-M by the real code.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

import tl_course.data
from tl_course.capstone import (
    CLASS_NAMES,
    FolderError,
    FolderScan,
    load_rgb,
    save_uploads,
    scan_folder,
    stratified_split,
    write_demo_folder,
)
from tl_course.capstone.demo import FORMATS
from tl_course.capstone.folder import write_json_atomic
from tl_course.data import filter_classes
from tl_course.domains import make_mnist_m


def _png(path: Path, value: int = 40, size: int = 6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path)
    return path


# ----------------------------------------------------------------- demo folder


def _fake_sample():
    """A stand-in for data.mnist_sample: 25 random 'digits' of each class 0-9, interleaved."""
    gen = torch.Generator().manual_seed(123)
    x = torch.rand(250, 1, 28, 28, generator=gen)
    y = torch.arange(10).repeat(25)
    return TensorDataset(x, y), TensorDataset(x[:10], y[:10])


@pytest.fixture
def fake_sample(monkeypatch):
    monkeypatch.setattr(tl_course.data, "mnist_sample", _fake_sample)


def _reference_demo(out: Path, per_class, seed: int, start: int, root: Path) -> Path:
    """The demo folder as documented, written by a bare loop: MNIST-M digits 5-9 of seed
    `seed`, class c's images from position `start`, sizes 40..96 drawn by a generator
    seeded with `seed`, bilinear resize, formats cycling png/jpg/webp/bmp, every 11th
    file (from the 4th) greyscale, every 11th (from the 8th) RGBA png; then the debris."""
    train, _ = _fake_sample()
    images, labels = make_mnist_m(filter_classes(train, (5, 6, 7, 8, 9)), seed=seed,
                                  root=root).tensors
    gen = torch.Generator().manual_seed(seed)
    for c, name in enumerate(CLASS_NAMES):
        (out / name).mkdir(parents=True)
        picked = [i for i in range(len(labels)) if labels[i] == c][start:start + per_class[c]]
        for j, i in enumerate(picked):
            size = int(torch.randint(40, 97, (1,), generator=gen))
            arr = (images[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            img = Image.fromarray(arr).resize((size, size), Image.BILINEAR)
            fmt = FORMATS[j % 4]
            if j % 11 == 3:
                img = img.convert("L")
            elif j % 11 == 7:
                img, fmt = img.convert("RGBA"), "png"
            img.save(out / name / f"{name}_{j:03d}.{fmt}")
    (out / "five" / ".DS_Store").write_bytes(b"\x00\x01")
    (out / "six" / "notes.txt").write_text("not an image\n")
    good = (out / "seven" / "seven_001.jpg").read_bytes()  # seven's first jpg
    (out / "seven" / "seven_broken.jpg").write_bytes(good[: len(good) // 3])
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and p.name != ".complete"}


def test_demo_folder_at_its_defaults_equals_a_reference_writer_byte_for_byte(
        tmp_path, fake_sample, data_root):
    """Default seed (0) and start (0): every file, debris included, is byte-identical to the
    bare reference loop; 19 images in one class reach the second greyscale (j=14) and RGBA
    (j=18) files; the MNIST-M cache goes to the `root` given, not the default data folder."""
    per_class = (19, 2, 2, 2, 2)
    root = tmp_path / "cache"
    out = write_demo_folder(tmp_path / "demo", per_class=per_class, root=root)
    assert list((root / "mnist_m").glob("*.pt"))
    assert not (data_root / "mnist_m").exists()
    ref = _reference_demo(tmp_path / "ref", per_class, seed=0, start=0, root=root)
    got, want = _files(out), _files(ref)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name
    grey = np.asarray(load_rgb(out / "five" / "five_014.webp")).astype(int)
    assert np.abs(grey - grey[..., :1]).max() <= 2  # greyscale (WebP stores it as RGB)
    with Image.open(out / "five" / "five_018.png") as rgba:
        assert rgba.mode == "RGBA"


def test_demo_folder_seed_and_start_choose_the_images(tmp_path, fake_sample):
    """seed=1, start=2 (a held-out folder): byte-identical to the reference for that seed
    and start, so both are passed on (to MNIST-M and to the size generator)."""
    per_class = (3, 2, 2, 2, 2)
    root = tmp_path / "cache"
    out = write_demo_folder(tmp_path / "demo", per_class=per_class, seed=1, start=2, root=root)
    ref = _reference_demo(tmp_path / "ref", per_class, seed=1, start=2, root=root)
    assert _files(out) == _files(ref)


# ----------------------------------------------------------------- load_rgb


def _wide_grey(arr: np.ndarray, path: Path) -> Path:
    Image.fromarray(arr).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I"), raw.mode
    return path


@pytest.mark.parametrize("values, dtype, suffix", [
    ([0, 1000, 51529, 65535], np.uint16, "png"),  # 16-bit: /65535; 51529 -> 200.50 -> 201
    ([0, 1, 128, 255], np.uint16, "png"),         # 8-bit values in a 16-bit file: unchanged
    ([0, 3, 256, 256], np.uint16, "png"),         # one step above 8-bit: 16-bit scale
    ([-70000, 0, 70000, 100], np.int32, "tif"),  # 32-bit: negatives black, >65535 white
])
def test_load_rgb_rescales_wide_greyscale_exactly(tmp_path, values, dtype, suffix):
    """16/32-bit greyscale: values up to 255 are kept as 8-bit, larger ones are scaled by
    255/65535; rounded and clipped to 0..255, the same in R, G and B."""
    arr = np.array([values] * 2, dtype=dtype)
    path = _wide_grey(arr, tmp_path / f"scan.{suffix}")
    top = 65535.0 if max(values) > 255 else 255.0
    grey = [min(255, max(0, int(np.floor(v / top * 255 + 0.5)))) for v in values]
    img = load_rgb(path)
    assert img.mode == "RGB"
    expected = np.array([[[g, g, g] for g in grey]] * 2, dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(img), expected)


def test_load_rgb_composites_grey_with_alpha_onto_white(tmp_path):
    """An LA image: a transparent pixel becomes white, an opaque one keeps its grey."""
    img = Image.new("LA", (2, 1), (0, 0))
    img.putpixel((1, 0), (100, 255))
    img.save(tmp_path / "la.png")
    rgb = load_rgb(tmp_path / "la.png")
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((1, 0)) == (100, 100, 100)


# ----------------------------------------------------------------- scan_folder


def test_scan_ignores_what_macos_and_windows_leave_behind(tmp_path):
    """__MACOSX, Thumbs.db and desktop.ini (folders too, with images in them) are neither
    classes nor parts of a class: only the real images are found."""
    root = tmp_path / "photos"
    real = [_png(root / c / f"{i}.png") for c in ("a", "b") for i in range(2)]
    for junk in ("__MACOSX", "Thumbs.db", "desktop.ini"):
        _png(root / junk / "x.png")
        _png(root / junk / "y.png")
        _png(root / "a" / junk / "z.png")
    scan = scan_folder(root)
    assert scan.classes == ["a", "b"]
    assert scan.paths == real
    assert scan.labels == [0, 0, 1, 1]


def test_skip_reason_is_the_error_type_and_message_cut_to_120_characters(tmp_path):
    """A text file named .png is skipped with 'ErrorType: message', at most 120 characters."""
    root = tmp_path / "photos"
    for c in ("a", "b"):
        _png(root / c / "1.png")
        _png(root / c / "2.png")
    fake = root / "a" / ("not_really_an_image_" * 5 + ".png")
    fake.write_text("hello")
    with pytest.raises(Exception) as err:
        with Image.open(fake) as im:
            im.load()
    full = f"{err.type.__name__}: {err.value}"
    assert len(full) > 121
    scan = scan_folder(root)
    assert scan.skipped == [(fake, full[:120])]


def test_a_folder_without_subfolders_or_images_gets_no_image_count(tmp_path):
    """No subfolders and no loose images: the message says so without an image count."""
    root = tmp_path / "empty"
    root.mkdir()
    (root / "readme.txt").write_text("x")
    with pytest.raises(FolderError) as err:
        scan_folder(root)
    msg = str(err.value)
    assert msg.startswith(f"{root} has no class subfolders: put each class's images")
    assert "lie directly" not in msg


def test_summary_lists_counts_skipped_files_and_the_warning_line_by_line(tmp_path):
    """summary(): one line per fact (totals, each class, skipped files, the warning)."""
    root = Path("/photos")
    labels = [0] * 6 + [1] * 2
    paths = [root / f"{i}.png" for i in range(8)]
    skipped = [(root / "bad.jpg", "OSError: truncated")]
    scan = FolderScan(root, ["cats", "dogs"], paths, labels, skipped)
    warning = scan.imbalance_warning()
    assert warning
    assert scan.summary().split("\n") == [
        f"8 images in 2 classes under {root}",
        "  " + "cats".ljust(20) + " 6",
        "  " + "dogs".ljust(20) + " 2",
        "skipped 1 file(s) that could not be read:",
        f"  {root / 'bad.jpg'} (OSError: truncated)",
        warning,
    ]


def test_imbalance_warning_points_to_per_class_accuracy_and_the_baseline():
    """The warning says what to read instead of accuracy alone."""
    scan = FolderScan(Path("/x"), ["a", "b"], [Path("/x/1.png")] * 8, [0] * 6 + [1] * 2)
    warning = scan.imbalance_warning()
    assert warning.startswith("warning: classes are imbalanced (6 vs 2 images)")
    assert "accuracy alone flatters the big classes" in warning
    assert "read the per-class accuracy and the majority baseline" in warning


# ----------------------------------------------------------------- save_uploads, JSON


def _upload(name: str) -> dict:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buf, "PNG")
    return {"name": name, "content": buf.getvalue()}


def test_save_uploads_skips_a_non_image_and_goes_on(tmp_path, capsys):
    """A non-image among the uploads is skipped with a message; the images after it are saved."""
    files = [{"name": "notes.txt", "content": b"x"}, _upload("a.png"),
             {"name": "b.pdf", "content": b"%PDF"}, _upload("c.jpg")]
    saved = save_uploads(files, tmp_path, "cats")
    assert saved == [tmp_path / "cats" / "a.png", tmp_path / "cats" / "c.jpg"]
    assert sorted(p.name for p in (tmp_path / "cats").iterdir()) == ["a.png", "c.jpg"]
    out = capsys.readouterr().out
    assert "skipped notes.txt" in out and "skipped b.pdf" in out


def test_save_uploads_renames_a_hidden_temp_file_from_the_class_folder(tmp_path, monkeypatch):
    """Each file is written to a hidden temp file in its class folder (so a scan never sees
    half a file and the rename is atomic), then renamed; nothing lands in the system temp."""
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    renames = []
    real_replace = os.replace

    def spy(src, dst):
        renames.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    saved = save_uploads([_upload("a.png"), _upload("b.png")], tmp_path / "up", "cats")
    assert [dst for _, dst in renames] == saved
    for src, dst in renames:
        assert src.parent == dst.parent == tmp_path / "up" / "cats"
        assert src.name.startswith(f".{dst.name}.")
    assert list(system_tmp.iterdir()) == []


def test_write_json_atomic_writes_readable_indented_json(tmp_path):
    """The JSON is indented by 2 (one key per line, easy to read and edit), newline-ended."""
    obj = {"classes": ["a", "b"], "preprocess": {"image_size": 28, "mean": [0.5]}}
    path = write_json_atomic(obj, tmp_path / "sub" / "model.json")
    assert path == tmp_path / "sub" / "model.json"
    assert path.read_text() == json.dumps(obj, indent=2) + "\n"
    assert json.loads(path.read_text()) == obj


# ----------------------------------------------------------------- stratified split


def test_stratified_split_at_its_default_seed_equals_a_reference_loop():
    """Default seed 0: per class (in label order) a permutation from one generator seeded 0,
    the first round(pct*n) (at least 1, at most n-1) to validation; indices sorted."""
    labels = [2, 0, 1, 0, 2, 1, 0, 0, 1, 2, 0, 1, 0, 2, 2, 0, 1]
    pct = 0.4
    gen = torch.Generator().manual_seed(0)
    train, valid = [], []
    for c in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == c]
        perm = torch.randperm(len(idx), generator=gen).tolist()
        idx = [idx[k] for k in perm]
        n_val = min(len(idx) - 1, max(1, round(pct * len(idx))))
        valid += idx[:n_val]
        train += idx[n_val:]
    assert stratified_split(labels, pct) == (sorted(train), sorted(valid))
    assert Counter(labels[i] for i in valid) == {0: 3, 1: 2, 2: 2}


@pytest.mark.parametrize("mode,key,seen", [("RGB", (0, 0, 0), (0, 0, 0)), ("L", 0, 0)],
                         ids=["rgb", "grey"])
def test_load_rgb_composites_a_transparent_colour_key_onto_white(tmp_path, mode, key, seen):
    """A PNG whose colour `key` is marked transparent (tRNS chunk, no alpha channel): those
    pixels come out white, the others keep their colour, as for an alpha channel."""
    from PIL import Image

    from tl_course.capstone.folder import load_rgb

    img = Image.new(mode, (4, 2), seen)
    other = (200, 100, 50) if mode == "RGB" else 120
    img.putpixel((3, 1), other)
    path = tmp_path / "keyed.png"
    img.save(path, transparency=key)
    assert "transparency" in Image.open(path).info  # the key survived the round trip
    out = load_rgb(path)
    want = [(255, 255, 255)] * 8
    want[7] = other if mode == "RGB" else (other,) * 3
    assert out.mode == "RGB"
    assert [out.getpixel((i % 4, i // 4)) for i in range(8)] == want


def test_save_uploads_leaves_nothing_behind_when_a_write_fails(tmp_path):
    """An upload whose content cannot be written raises, and leaves no hidden temp file in
    the class folder; the uploads saved before it stay."""
    from tl_course.capstone.folder import save_uploads

    good = {"name": "a.png", "content": b"\x89PNG fake"}
    bad = {"name": "b.png", "content": object()}  # bytes(object()) raises TypeError
    with pytest.raises(TypeError):
        save_uploads([good, bad], tmp_path, "cats")
    assert sorted(p.name for p in (tmp_path / "cats").iterdir()) == ["a.png"]


def test_load_rgb_composites_a_palette_image_with_alpha_onto_white(tmp_path):
    """A TIFF in mode PA (palette colours plus an alpha channel): the transparent pixel
    comes out white, the opaque one keeps its palette colour."""
    from PIL import Image

    from tl_course.capstone.folder import load_rgb

    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pa = img.convert("PA")
    pa.putpixel((0, 0), (0, 0))  # colour 0, fully transparent
    pa.putpixel((1, 0), (1, 255))  # colour 1, opaque
    path = tmp_path / "palette_alpha.tif"
    pa.save(path)
    assert Image.open(path).mode == "PA"
    out = load_rgb(path)
    assert [out.getpixel((0, 0)), out.getpixel((1, 0))] == [(255, 255, 255), (200, 100, 50)]
