"""The capstone package: a real-world image folder -> a trained, exported classifier -> predictions.

Everything runs on tiny images and tiny models: the digits backbone is replaced by a fresh
DigitCNN (no MNIST source model is trained), ImageNet weights are a random state_dict put
where torchvision's cache keeps them, so the real loading paths run offline.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import tl_course.capstone.training as training
from tl_course.capstone import (
    CLASS_NAMES,
    DIGITS,
    Exported,
    ExportError,
    FolderError,
    FolderScan,
    build_model,
    image_paths,
    load_export,
    load_rgb,
    metrics_from,
    predict_images,
    preprocessing,
    save_export,
    save_uploads,
    scan_folder,
    stratified_split,
    to_tensor,
    top_losses,
    train_folder,
    write_demo_folder,
)
from tl_course.capstone.export import FORMAT
from tl_course.capstone.training import backbone_model
from tl_course.cli import main
from tl_course.models import BACKBONES, DigitCNN, weights_file
from tl_course.profile import get_profile

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SHAPES = ("circles", "squares", "triangles")  # already in sorted order
PER_SHAPE = 10
EXPORT_FILES = {"model.pt", "model.json", "split.json", "top_losses.png"}


# ----------------------------------------------------------------- helpers and fixtures


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def _shape_image(shape: str, colour: tuple[int, int, int], size: int = 28,
                 offset: int = 0) -> Image.Image:
    img = Image.new("RGB", (size, size), (20, 20, 20))
    draw = ImageDraw.Draw(img)
    lo, hi = 5 + offset, size - 6 + offset
    if shape == "circles":
        draw.ellipse((lo, lo, hi, hi), fill=colour)
    elif shape == "squares":
        draw.rectangle((lo, lo, hi, hi), fill=colour)
    else:
        draw.polygon([(lo, hi), (hi, hi), ((lo + hi) // 2, lo)], fill=colour)
    return img


def write_shapes(root: Path, classes: tuple[str, ...] = SHAPES, n: int = PER_SHAPE) -> Path:
    """`n` 28x28 coloured shapes per class, in ImageFolder layout."""
    colours = [(230, 40, 40), (40, 200, 60), (50, 80, 230), (240, 220, 30), (200, 60, 200)]
    for c in classes:
        for i in range(n):
            img = _shape_image(c, colours[i % len(colours)], offset=i % 3 - 1)
            _save(img, root / c / f"{c}_{i:02d}.png")
    return root


def _digit_factory(store: list):
    """A stand-in for training.backbone_model: a fresh DigitCNN, kept in `store`."""
    def make(backbone, num_classes, profile, device, seed):
        assert backbone == DIGITS
        model = DigitCNN(num_classes=num_classes).to(device)
        store.append(model)
        return model

    return make


@pytest.fixture
def shapes(tmp_path: Path) -> Path:
    """A fresh 3-class folder of 10 coloured 28x28 shapes each."""
    return write_shapes(tmp_path / "shapes")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """train_folder on the shapes folder once per mode (probe, finetune), same seed.

    Returns {mode: (TrainResult, trained model object, out folder)} plus "folder".
    """
    base = tmp_path_factory.mktemp("trained")
    folder = write_shapes(base / "shapes")
    runs: dict = {"folder": folder}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TL_COURSE_DATA", str(base / "data"))
        mp.setenv("TORCH_HOME", str(base / "torch-home"))
        for mode in ("probe", "finetune"):
            store: list = []
            mp.setattr(training, "backbone_model", _digit_factory(store))
            out = base / f"out-{mode}"
            result = train_folder(folder, out, backbone=DIGITS, mode=mode, valid_pct=0.2,
                                  seed=0, epochs=1, profile="smoke",
                                  device=torch.device("cpu"), progress=False)
            assert len(store) == 1
            runs[mode] = (result, store[0], out)
    return runs


def _small_export(folder: Path, classes=("a", "b", "c")) -> DigitCNN:
    """Save a DigitCNN export (CPU tensors, non-trivial BatchNorm statistics) to `folder`."""
    torch.manual_seed(0)
    model = DigitCNN(num_classes=len(classes))
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 1, 28, 28) * 3)  # moves the running statistics
    model.eval()
    save_export(model, folder, {"classes": list(classes), "backbone": DIGITS,
                                "preprocess": preprocessing(DIGITS)})
    return model


# ----------------------------------------------------------------- 1. real-world folders


@pytest.fixture
def messy(tmp_path: Path) -> dict:
    """A folder as a learner's photos arrive: formats, modes, EXIF, debris, a broken file."""
    root = tmp_path / "messy"
    a, b = root / "apples", root / "bananas"
    good_a = [
        _save(Image.new("RGB", (30, 20), (200, 10, 10)), a / "plain.png"),
        _save(Image.new("RGB", (64, 48), (10, 200, 10)), a / "photo.JPG"),
        _save(Image.new("RGB", (17, 33), (10, 10, 200)), a / "web.webp"),
        _save(Image.new("RGB", (25, 25), (90, 90, 90)), a / "old.bmp"),
        _save(Image.new("L", (40, 40), 128), a / "grey.png"),
    ]
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((5, 5), (0, 0, 255, 255))
    good_a.append(_save(rgba, a / "alpha.png"))
    pal = Image.new("P", (12, 12), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    pal.putpixel((3, 3), 1)
    good_a.append(_save(pal, a / "palette.png", transparency=0))
    good_a.append(_save(Image.new("CMYK", (20, 30), (0, 255, 255, 0)), a / "print.jpg"))
    # 40 wide x 20 high on disk, left half red, right half blue; EXIF says "rotate 90 CW".
    rotated = Image.new("RGB", (40, 20), (255, 0, 0))
    rotated.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    good_a.append(_save(rotated, a / "phone.jpg", exif=exif.tobytes(), quality=95))
    good_a.append(_save(Image.new("RGB", (22, 22), (1, 2, 3)), a / "trip" / "day1" / "deep.png"))
    # debris: hidden file, hidden folder, text file, truncated JPEG
    (a / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    _save(Image.new("RGB", (8, 8)), a / ".thumbnails" / "thumb.png")
    (a / "notes.txt").write_text("bought on Monday\n")
    full = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(full, "JPEG")
    broken = a / "broken.jpg"
    broken.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    good_b = [
        _save(Image.new("RGB", (50, 10), (250, 250, 0)), b / "b1.png"),
        _save(Image.new("RGB", (10, 50), (250, 240, 0)), b / "b2.jpeg"),
        _save(Image.new("LA", (16, 16), (200, 255)), b / "b3.png"),
    ]
    # a hidden folder next to the classes is not a class
    _save(Image.new("RGB", (8, 8)), root / ".cache" / "x.png")
    _save(Image.new("RGB", (8, 8)), root / ".cache" / "y.png")
    (root / "README.txt").write_text("my photos\n")
    return {"root": root, "good_a": good_a, "good_b": good_b, "broken": broken,
            "rotated": a / "phone.jpg", "rgba": a / "alpha.png", "palette": a / "palette.png",
            "cmyk": a / "print.jpg", "grey": a / "grey.png"}


def test_scan_finds_exactly_the_readable_images_with_labels(messy):
    """scan_folder: sorted classes, every readable image (nested too) with its label, no debris."""
    scan = scan_folder(messy["root"])
    assert scan.classes == ["apples", "bananas"]
    found = dict(zip(scan.paths, scan.labels, strict=True))
    expected = {p: 0 for p in messy["good_a"]} | {p: 1 for p in messy["good_b"]}
    assert found == expected
    assert len(scan.paths) == len(expected)  # no duplicates
    assert scan.counts() == {"apples": len(messy["good_a"]), "bananas": len(messy["good_b"])}


def test_each_images_class_name_is_its_folder_whatever_the_case(tmp_path):
    """Class folders named with and without capitals: the classes are the folder names in
    sorted order (as torchvision's ImageFolder), and every image's label names its folder."""
    root = tmp_path / "cased"
    names = ("apple", "Zebra", "mango", "Banana")
    for name in names:
        for i in range(2):
            _save(Image.new("RGB", (8, 8), (40 * i, 0, 0)), root / name / f"{i}.png")
    scan = scan_folder(root)
    assert scan.classes == sorted(names) == ["Banana", "Zebra", "apple", "mango"]
    assert [scan.classes[label] for label in scan.labels] == [p.parent.name for p in scan.paths]
    assert len(scan.paths) == 2 * len(names)


def test_truncated_jpeg_is_skipped_and_listed(messy):
    """A truncated JPEG is skipped with a reason, not raised, and named in the summary."""
    scan = scan_folder(messy["root"])
    assert [p for p, _ in scan.skipped] == [messy["broken"]]
    reason = scan.skipped[0][1]
    assert reason and len(reason) <= 120
    assert "broken.jpg" in scan.summary() and "skipped 1 file" in scan.summary()


def test_scan_without_checking_images_keeps_the_broken_file(messy):
    """check_images=False trusts the suffix: the truncated file is listed as an image."""
    scan = scan_folder(messy["root"], check_images=False)
    assert messy["broken"] in scan.paths and scan.skipped == []


def test_load_rgb_always_returns_rgb(messy):
    """Every readable image, whatever its mode (L, LA, RGBA, P, CMYK), loads as RGB."""
    for p in messy["good_a"] + messy["good_b"]:
        img = load_rgb(p)
        assert img.mode == "RGB", p
    with Image.open(messy["cmyk"]) as raw:
        assert raw.mode == "CMYK"
    r, g, b = load_rgb(messy["cmyk"]).getpixel((10, 15))
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 255, 255, 0) is red
    assert load_rgb(messy["grey"]).getpixel((3, 3)) == (128, 128, 128)


def test_transparent_pixels_become_white(messy):
    """RGBA alpha 0 and a palette's transparent index composite onto white."""
    img = load_rgb(messy["rgba"])
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((5, 5)) == (0, 0, 255)
    pal = load_rgb(messy["palette"])
    assert pal.getpixel((0, 0)) == (255, 255, 255)
    assert pal.getpixel((3, 3)) == (255, 0, 0)


def test_exif_orientation_is_applied(messy):
    """EXIF orientation 6: the loaded size is the stored size transposed, left half on top."""
    with Image.open(messy["rotated"]) as raw:
        assert raw.size == (40, 20)
    img = load_rgb(messy["rotated"])
    assert img.size == (20, 40)
    top, bottom = img.getpixel((10, 5)), img.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the stored left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_load_rgb_raises_for_unreadable_files(messy, tmp_path):
    """load_rgb raises (OSError) for a truncated JPEG and for text named .png."""
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    for p in (messy["broken"], fake):
        with pytest.raises(OSError):
            load_rgb(p)


def test_load_rgb_16bit_greyscale_png_keeps_contrast(tmp_path):
    """A 16-bit greyscale PNG (microscopy, medical scans) keeps its contrast as RGB."""
    arr = np.zeros((4, 4), np.uint16)
    arr[0] = 1000     # ~1.5% grey
    arr[1] = 16384    # 25% grey
    arr[2] = 32768    # 50% grey
    arr[3] = 65535    # white
    path = _save(Image.fromarray(arr), tmp_path / "scan16.png")
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    rgb = np.asarray(load_rgb(path))[:, 0, 0].astype(int)
    expected = (arr[:, 0].astype(float) / 65535 * 255).round()
    assert np.abs(rgb - expected).max() <= 2, rgb


@pytest.mark.parametrize("name", ["cats", "big dogs", "_other"])
def test_uploaded_class_is_found_by_scan_folder(tmp_path, name):
    """A class save_uploads accepts is a class scan_folder finds (names safe, non-images out)."""
    def upload(fname, img=None):
        buf = io.BytesIO()
        (img or Image.new("RGB", (12, 12), (9, 9, 9))).save(buf, "PNG")
        return {"name": fname, "content": buf.getvalue()}

    root = tmp_path / "up"
    if name.startswith("_"):  # either refused up front, or a class like any other
        try:
            save_uploads([upload("x.png")], tmp_path / "probe", name)
        except FolderError:
            return
    saved = save_uploads([upload("a.png"), upload("../../escape.png"),
                          {"name": "notes.txt", "content": b"x"}], root, name)
    assert saved == [root / name / "a.png", root / name / "escape.png"]
    assert not (tmp_path / "escape.png").exists()
    save_uploads([upload("b1.png"), upload("b2.png")], root, "zebras")
    scan = scan_folder(root)
    assert scan.classes == sorted([name, "zebras"])
    assert scan.counts()[name] == 2


@pytest.mark.parametrize("name", ["", "  ", ".hidden", "a/b", "a\\b"])
def test_save_uploads_rejects_unusable_class_names(tmp_path, name):
    """Empty, hidden or path-like class names: FolderError, nothing written."""
    with pytest.raises(FolderError, match="cannot be a folder name"):
        save_uploads([], tmp_path / "up", name)
    assert not (tmp_path / "up").exists()


# ----------------------------------------------------------------- 2. folder errors


def test_missing_folder_is_a_folder_error(tmp_path):
    """A folder that does not exist: FolderError saying what to give."""
    with pytest.raises(FolderError, match="is not a folder.*one subfolder of images per class"):
        scan_folder(tmp_path / "nope")


def test_loose_images_without_class_subfolders(tmp_path):
    """Images directly in the folder: FolderError counting them and saying to add subfolders."""
    for i in range(3):
        _save(Image.new("RGB", (8, 8)), tmp_path / "flat" / f"{i}.png")
    with pytest.raises(FolderError) as err:
        scan_folder(tmp_path / "flat")
    msg = str(err.value)
    assert "no class subfolders" in msg and "3 images lie directly in it" in msg
    assert "its own subfolder" in msg


def test_one_class_only(tmp_path):
    """One class subfolder: FolderError naming it and asking for another class."""
    write_shapes(tmp_path / "one", classes=("circles",), n=3)
    with pytest.raises(FolderError, match=r"one class \(circles\).*add a subfolder"):
        scan_folder(tmp_path / "one")


def test_class_with_fewer_than_two_readable_images(tmp_path):
    """One good + one corrupt image in a class: FolderError naming the class."""
    root = write_shapes(tmp_path / "few", classes=("circles", "squares"), n=3)
    for p in (root / "squares").iterdir():
        p.unlink()
    _save(Image.new("RGB", (8, 8)), root / "squares" / "ok.png")
    (root / "squares" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(FolderError, match="squares have fewer than 2 readable images.*add images"):
        scan_folder(root)


# ----------------------------------------------------------------- 3. stratified split

# labels interleaved on purpose: class sizes 10, 7, 3, 2
SPLIT_LABELS = [0, 1, 2, 3] * 2 + [0, 1, 2] + [0, 1] * 4 + [0] * 3
SPLIT_COUNTS = {0: 10, 1: 7, 2: 3, 3: 2}


def test_split_labels_have_the_intended_counts():
    """The test's label list really has classes of 10, 7, 3 and 2 images."""
    assert {c: SPLIT_LABELS.count(c) for c in SPLIT_COUNTS} == SPLIT_COUNTS


@pytest.mark.parametrize("pct, expected_valid", [
    (0.2, {0: 2, 1: 1, 2: 1, 3: 1}),   # round(1.4)=1, round(0.6)=1, round(0.4)=0 -> at least 1
    (0.5, {0: 5, 1: 4, 2: 2, 3: 1}),   # round(3.5)=4, round(1.5)=2, class of 2 keeps 1 to train
    (0.9, {0: 9, 1: 6, 2: 2, 3: 1}),   # round(6.3)=6, round(2.7)=3 -> capped to leave 1 to train
])
def test_stratified_split_counts_per_class(pct, expected_valid):
    """Each class: round(pct*n) in validation (at least 1), at least 1 left to train."""
    train, valid = stratified_split(SPLIT_LABELS, pct, seed=0)
    assert set(train).isdisjoint(valid)
    assert sorted(train + valid) == list(range(len(SPLIT_LABELS)))
    assert train == sorted(train) and valid == sorted(valid)
    got_valid = {c: sum(SPLIT_LABELS[i] == c for i in valid) for c in SPLIT_COUNTS}
    got_train = {c: sum(SPLIT_LABELS[i] == c for i in train) for c in SPLIT_COUNTS}
    assert got_valid == expected_valid
    assert got_train == {c: SPLIT_COUNTS[c] - expected_valid[c] for c in SPLIT_COUNTS}
    assert min(got_train.values()) >= 1


def test_stratified_split_is_reproducible_by_seed():
    """Same seed -> same split; another seed -> another split."""
    a = stratified_split(SPLIT_LABELS, 0.3, seed=5)
    assert stratified_split(SPLIT_LABELS, 0.3, seed=5) == a
    assert stratified_split(SPLIT_LABELS, 0.3, seed=6) != a
    assert stratified_split(SPLIT_LABELS, 0.3, seed=7) != a


@pytest.mark.parametrize("pct", [0, 1, -0.1, 1.5])
def test_stratified_split_rejects_bad_valid_pct(pct):
    """valid_pct outside (0, 1): ValueError."""
    with pytest.raises(ValueError, match="valid_pct must be between 0 and 1"):
        stratified_split(SPLIT_LABELS, pct)


# ----------------------------------------------------------------- 4. imbalance warning


def _scan(labels: list[int], classes=("a", "b", "c")) -> FolderScan:
    classes = list(classes)[: max(labels) + 1]
    return FolderScan(Path("/x"), classes, [Path(f"/x/{i}.png") for i in labels], labels)


@pytest.mark.parametrize("labels, warns", [
    ([0] * 6 + [1] * 2, True),            # 3.0: at the threshold
    ([0] * 9 + [1] * 3 + [2] * 4, True),  # 3.0 between the largest and smallest
    ([0] * 10 + [1] * 2, True),           # 5.0
    ([0] * 5 + [1] * 2, False),           # 2.5
    ([0] * 8 + [1] * 3 + [2] * 7, False),  # 2.67
    ([0] * 4 + [1] * 4, False),           # balanced
])
def test_imbalance_warning_threshold(labels, warns):
    """The imbalance warning appears at largest/smallest >= 3 and not below."""
    scan = _scan(labels)
    warning = scan.imbalance_warning()
    assert bool(warning) is warns
    assert (warning in scan.summary()) if warns else ("imbalanced" not in scan.summary())
    if warns:
        counts = [labels.count(c) for c in set(labels)]
        assert f"({max(counts)} vs {min(counts)} images)" in warning


# ----------------------------------------------------------------- 5. metrics


def test_metrics_from_hand_computed():
    """Accuracy, train-majority baseline, balanced / per-class accuracy, confusion matrix."""
    classes = ["a", "b", "c"]
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    preds = [0, 0, 1, 1, 2, 0]
    logits = torch.full((6, 3), -1.0)
    for i, p in enumerate(preds):
        logits[i, p] = 2.0
    train_labels = [1, 1, 1, 0, 2]  # train majority is b, though a is the validation majority
    m = metrics_from(logits, labels, train_labels, classes)
    assert m["val_accuracy"] == pytest.approx(4 / 6)
    assert m["majority_class"] == "b"
    assert m["majority_baseline"] == pytest.approx(1 / 6)
    assert m["per_class_accuracy"] == pytest.approx({"a": 2 / 3, "b": 1.0, "c": 1 / 2})
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert m["val_images"] == 6
    json.dumps(m)  # goes into model.json as is


def test_top_losses_highest_cross_entropy_first():
    """top_losses: indices by descending cross-entropy, computed by hand with log-sum-exp."""
    logits = torch.tensor([[2.0, 0.0, 0.0],    # right, confident
                           [0.0, 3.0, 0.0],    # wrong (true 0), confident
                           [0.5, 0.4, 0.0],    # right, barely
                           [0.0, 0.0, 1.0],    # wrong (true 1)
                           [1.0, 1.0, 1.0]])   # undecided
    labels = torch.tensor([0, 0, 0, 1, 2])
    losses = [math.log(sum(math.exp(v) for v in row)) - row[y]
              for row, y in zip(logits.tolist(), labels.tolist(), strict=True)]
    order = sorted(range(len(losses)), key=lambda i: -losses[i])
    assert order[:2] == [1, 3]  # sanity of the hand computation
    assert top_losses(logits, labels, n=3).tolist() == order[:3]
    assert top_losses(logits, labels, n=50).tolist() == order


def test_gather_logits_puts_every_shard_back_at_its_indices(monkeypatch):
    """Three processes' (indices, logits), strided as the evaluation shards are: row i of
    the result is example i's logits. A shard given twice, or missing, is refused. The
    all-gather is stood in for (it returns the processes' pairs in rank order)."""
    n = 8
    whole = torch.arange(n * 2, dtype=torch.float32).view(n, 2)
    parts = [(list(range(r, n, 3)), whole[r::3]) for r in range(3)]
    monkeypatch.setattr(training, "gather_objects", lambda obj, d: parts)
    assert torch.equal(training.gather_logits(*parts[0], n), whole)
    for broken in ([*parts, parts[1]], parts[:2]):
        monkeypatch.setattr(training, "gather_objects", lambda obj, d, b=broken: b)
        with pytest.raises(RuntimeError, match="exactly once"):
            training.gather_logits(*parts[0], n)


# ----------------------------------------------------------------- 6. export round trip


@pytest.mark.parametrize("mode", ["probe", "finetune"])
def test_train_folder_writes_the_export_files_only(trained, mode):
    """train_folder writes model.pt, model.json, split.json, top_losses.png; no temp files."""
    _, _, out = trained[mode]
    assert {p.name for p in out.iterdir()} == EXPORT_FILES
    with Image.open(out / "top_losses.png") as img:
        assert img.format == "PNG"


@pytest.mark.parametrize("mode", ["probe", "finetune"])
def test_model_json_records_what_loading_needs(trained, mode):
    """model.json: format, classes, backbone, preprocessing, metrics, versions, split seed."""
    result, _, out = trained[mode]
    meta = json.loads((out / "model.json").read_text())
    assert meta["format"] == FORMAT == "tl-course-export/1"
    assert meta["classes"] == list(SHAPES) == result.classes
    assert meta["backbone"] == DIGITS and meta["mode"] == mode
    assert meta["preprocess"] == {"channels": 1, "image_size": 28, "mean": [0.0], "std": [1.0]}
    assert meta["metrics"] == json.loads(json.dumps(result.metrics))
    assert meta["versions"]["torch"] == torch.__version__
    assert {"python", "torchvision", "numpy"} <= set(meta["versions"])
    assert meta["split"] == {"seed": 0, "valid_pct": 0.2, "file": "split.json"}
    assert meta["epochs"] == 1 and meta["skipped"] == []


@pytest.mark.parametrize("mode", ["probe", "finetune"])
def test_validation_metrics_match_the_predictions(trained, mode):
    """The metrics agree with TrainResult's validation labels and predictions (2 per class)."""
    result, _, _ = trained[mode]
    m = result.metrics
    true, pred = result.val_true, result.val_pred
    assert true.tolist() == [0, 0, 1, 1, 2, 2]  # round(0.2 * 10) = 2 per class, sorted
    assert m["val_images"] == 6
    assert m["val_accuracy"] == pytest.approx((true == pred).float().mean().item())
    cm = np.zeros((3, 3), int)
    for t, p in zip(true.tolist(), pred.tolist(), strict=True):
        cm[t, p] += 1
    assert m["confusion_matrix"] == cm.tolist()
    assert m["majority_baseline"] == pytest.approx(1 / 3)  # balanced classes
    assert [result.classes[t] for t in true.tolist()] == [p.parent.name for p in result.val_paths]
    assert "validation accuracy" in result.report()


def test_split_json_is_disjoint_complete_and_reproducible(trained):
    """split.json: relative paths, disjoint, all images, the seed's stratified split each run."""
    folder = trained["folder"]
    split = json.loads((trained["probe"][2] / "split.json").read_text())
    again = json.loads((trained["finetune"][2] / "split.json").read_text())
    assert split == again  # same seed, same split
    assert split["seed"] == 0 and split["valid_pct"] == 0.2 and split["classes"] == list(SHAPES)
    every = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))
    assert set(split["train"]).isdisjoint(split["valid"])
    assert sorted(split["train"] + split["valid"]) == every
    assert all(not Path(p).is_absolute() for p in split["train"] + split["valid"])
    for c in SHAPES:
        assert sum(p.startswith(c + "/") for p in split["valid"]) == 2
    scan = scan_folder(folder)
    _, valid = stratified_split(scan.labels, 0.2, 0)
    assert split["valid"] == [str(scan.paths[i].relative_to(folder)) for i in valid]
    result = trained["probe"][0]
    assert [str(p.relative_to(folder)) for p in result.val_paths] == split["valid"]


@pytest.mark.parametrize("mode", ["probe", "finetune"])
def test_model_pt_is_a_plain_state_dict(trained, mode):
    """model.pt loads with weights_only=True and holds the trained model's tensors."""
    _, model, out = trained[mode]
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    reference = model.state_dict()
    assert list(state) == list(reference)
    for k, v in state.items():
        assert v.device.type == "cpu"
        assert torch.equal(v, reference[k].cpu()), k


@pytest.mark.parametrize("mode", ["probe", "finetune"])
def test_load_export_predicts_exactly_like_the_trained_model(trained, mode):
    """load_export(out, cpu): the same logits (torch.equal) as the trained model."""
    result, model, out = trained[mode]
    exported = load_export(out, torch.device("cpu"))
    assert isinstance(exported, Exported) and exported.classes == list(SHAPES)
    paths = sorted(trained["folder"].rglob("*.png"))
    x = torch.stack([exported.tensor(p) for p in paths])
    assert x.shape == (len(paths), 1, 28, 28)
    model.eval()
    with torch.no_grad():
        assert torch.equal(exported.model(x), model(x))
        val_x = torch.stack([exported.tensor(p) for p in result.val_paths])
        assert torch.equal(exported.model(val_x).argmax(1), result.val_pred)


def test_exported_tensor_matches_independent_preprocessing(trained):
    """Exported.tensor: greyscale, resized to 28, /255, (x - mean) / std, as computed by hand."""
    exported = load_export(trained["probe"][2])
    path = trained["folder"] / "squares" / "squares_00.png"
    with Image.open(path) as img:
        grey = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    assert torch.allclose(exported.tensor(path)[0], torch.from_numpy(grey))
    prep = {"channels": 3, "image_size": 14, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1.0]}
    rgb = load_rgb(path).resize((14, 14), Image.BILINEAR)
    raw = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    expected = (raw - 0.5) / torch.tensor([0.25, 0.5, 1.0]).view(3, 1, 1)
    assert torch.allclose(to_tensor(load_rgb(path), prep), expected)


def test_to_tensor_keeps_rows_columns_and_channels_in_place():
    """A red top-right corner and a blue bottom band: channel 0 is red, rows stay rows and
    columns stay columns (HWC -> CHW), then (x - mean) / std per channel."""
    img = Image.new("RGB", (8, 8), (0, 0, 0))
    img.paste((255, 0, 0), (4, 0, 8, 4))  # (left, upper, right, lower): rows 0-3, columns 4-7
    img.paste((0, 0, 255), (0, 6, 8, 8))  # rows 6-7, every column
    mean, std = [0.5, 0.0, 0.25], [0.5, 1.0, 0.25]
    raw = torch.zeros(3, 8, 8)
    raw[0, 0:4, 4:8] = 1.0
    raw[2, 6:8, :] = 1.0
    expected = (raw - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    prep = {"channels": 3, "image_size": 8, "mean": mean, "std": std}
    assert torch.allclose(to_tensor(img, prep), expected)


def test_predict_images_top_k_sorted_and_clipped(trained):
    """predict_images: top-k sorted probabilities (softmax of the logits), k clipped to classes."""
    exported = load_export(trained["finetune"][2])
    paths = sorted((trained["folder"] / "circles").glob("*.png"))[:4]
    with torch.no_grad():
        probs = torch.softmax(exported.model(torch.stack([exported.tensor(p) for p in paths])), 1)
    rows = predict_images(exported, paths, top_k=10)
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    for row, p in zip(rows, probs, strict=True):
        assert len(row["top"]) == 3  # clipped to the 3 classes
        values = [q for _, q in row["top"]]
        assert values == sorted(values, reverse=True)
        assert sum(values) == pytest.approx(1.0, abs=1e-5)
        assert {c for c, _ in row["top"]} == set(SHAPES)
        best = int(p.argmax())
        assert row["top"][0] == (SHAPES[best], pytest.approx(float(p[best]), abs=1e-6))
    for row in predict_images(exported, paths, top_k=2, batch_size=3):
        values = [q for _, q in row["top"]]
        assert len(values) == 2 and values[0] >= values[1] and sum(values) <= 1 + 1e-6
    with pytest.raises(ValueError, match="top_k"):
        predict_images(exported, paths, top_k=0)


def test_predict_images_reports_unreadable_files_and_goes_on(trained, tmp_path):
    """An unreadable image gives an "error" row in place; the others are still predicted."""
    exported = load_export(trained["probe"][2])
    good = sorted((trained["folder"] / "squares").glob("*.png"))[:3]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths = [good[0], bad, good[1], good[2]]
    rows = predict_images(exported, paths, top_k=1, batch_size=2)
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    assert "error" in rows[1] and "top" not in rows[1]
    assert all("top" in r and "error" not in r for r in (rows[0], rows[2], rows[3]))
    alone = predict_images(exported, [good[1]], top_k=1)[0]
    assert alone["top"][0][0] == rows[2]["top"][0][0]


def test_image_paths_files_and_folders(tmp_path):
    """image_paths: files as given, images in folders sorted, hidden and non-images skipped."""
    d = tmp_path / "imgs"
    b = _save(Image.new("RGB", (8, 8)), d / "b.png")
    a = _save(Image.new("RGB", (8, 8)), d / "a.jpg")
    deep = _save(Image.new("RGB", (8, 8)), d / "sub" / "c.webp")
    _save(Image.new("RGB", (8, 8)), d / ".hidden" / "x.png")
    _save(Image.new("RGB", (8, 8)), d / ".y.png")
    (d / "notes.txt").write_text("x")
    single = _save(Image.new("RGB", (8, 8)), tmp_path / "single.bmp")
    assert image_paths([single, d]) == [single, a, b, deep]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_paths([tmp_path / "missing.png"])


def test_image_paths_in_a_folder_below_a_hidden_folder(tmp_path):
    """A folder inside a hidden parent (~/.cache/kagglehub/...) still yields its images."""
    d = tmp_path / ".cache" / "kagglehub" / "photos"
    a = _save(Image.new("RGB", (8, 8)), d / "a.png")
    assert image_paths([d]) == [a]


# ----------------------------------------------------------------- 7. device and eval mode


def test_load_export_returns_an_eval_model_on_the_requested_device(tmp_path):
    """load_export(map to CPU): model on that device, eval mode; predicting moves no BN stats."""
    original = _small_export(tmp_path / "exp")
    for device in (torch.device("cpu"), None):
        exported = load_export(tmp_path / "exp", device)
        assert exported.device == torch.device("cpu")
        assert {p.device for p in exported.model.parameters()} == {torch.device("cpu")}
        assert not any(m.training for m in exported.model.modules())
    bn = [m for m in exported.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn
    before = [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked))
              for m in bn]
    assert torch.equal(bn[0].running_mean, original.blocks["block1"][1].running_mean)
    img = _save(_shape_image("squares", (200, 30, 30)), tmp_path / "sq.png")
    first = predict_images(exported, [img, img])
    second = predict_images(exported, [img, img])
    assert first == second
    after = [(m.running_mean, m.running_var, int(m.num_batches_tracked)) for m in bn]
    for (m0, v0, n0), (m1, v1, n1) in zip(before, after, strict=True):
        assert torch.equal(m0, m1) and torch.equal(v0, v1) and n0 == n1


# ----------------------------------------------------------------- 8. export errors


def _break(folder: Path, how: str) -> None:
    js, pt = folder / "model.json", folder / "model.pt"
    meta = json.loads(js.read_text())
    if how == "no folder":
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    elif how == "no model.pt":
        pt.unlink()
    elif how == "no model.json":
        js.unlink()
    elif how == "bad json":
        js.write_text('{"format": "tl-course-export/1", "classes": [')
    elif how == "no format":
        del meta["format"]
        js.write_text(json.dumps(meta))
    elif how == "no classes":
        del meta["classes"]
        js.write_text(json.dumps(meta))
    elif how == "classes edited":
        meta["classes"] = meta["classes"] + ["d"]
        js.write_text(json.dumps(meta))
    elif how == "unknown backbone":
        meta["backbone"] = "vgg_giant"
        js.write_text(json.dumps(meta))
    elif how == "truncated pt":
        data = pt.read_bytes()
        pt.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("how, pattern", [
    ("no folder", "lacks model.pt and model.json: point --model at the folder"),
    ("no model.pt", "lacks model.pt:"),
    ("no model.json", "lacks model.json:"),
    ("bad json", "is not valid JSON .*re-export"),
    ("no format", "is not a tl-course export .*format 'tl-course-export/1'"),
    ("no classes", "is not a tl-course export"),
    ("classes edited", "with 4 classes, but model.pt holds 3 classes: the two files do not "
                       "belong together"),
    ("unknown backbone", "unknown backbone 'vgg_giant'; choose one of: digits, .*resnet18"),
    ("truncated pt", "model.pt cannot be read .*re-export"),
])
def test_load_export_errors_say_what_is_wrong(tmp_path, how, pattern):
    """A broken export folder: ExportError with a clear message, never a raw exception."""
    folder = tmp_path / "exp"
    _small_export(folder)
    load_export(folder)  # intact before breaking it
    _break(folder, how)
    with pytest.raises(ExportError, match=pattern):
        load_export(folder)


# ----------------------------------------------------------------- 9. ImageNet path offline


def test_imagenet_backbone_loads_cached_weights_offline(cpu):
    """backbone_model(mobilenet_v3_small) loads the state_dict in TORCH_HOME's cache, offline."""
    import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.mobilenet_v3_small(weights=None)
    path = weights_file("mobilenet_v3_small")
    assert path.name.startswith("mobilenet_v3_small-") and path.suffix == ".pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), path)
    model = backbone_model("mobilenet_v3_small", 3, get_profile("smoke"), cpu, 0)
    assert model.head[1].out_features == 3
    got = list(model.blocks.state_dict().values())
    want = list(reference.features.state_dict().values())
    assert len(got) == len(want)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_imagenet_preprocessing():
    """preprocessing(ImageNet backbone): 3 channels, 224 px, the weights' mean and std."""
    from torchvision.models import MobileNet_V3_Small_Weights

    prep = preprocessing("mobilenet_v3_small")
    assert prep == {"channels": 3, "image_size": 224, "mean": IMAGENET_MEAN,
                    "std": IMAGENET_STD}
    declared = MobileNet_V3_Small_Weights.IMAGENET1K_V1.transforms()
    assert prep["mean"] == pytest.approx(list(declared.mean))
    assert prep["std"] == pytest.approx(list(declared.std))
    assert preprocessing("resnet18", 96)["image_size"] == 96
    assert preprocessing(DIGITS) == {"channels": 1, "image_size": 28, "mean": [0.0],
                                     "std": [1.0]}


def test_unknown_backbone_names_the_choices(shapes, tmp_path):
    """An unknown backbone: ExportError listing the choices, before anything is written."""
    for call in (lambda: preprocessing("vgg_giant"), lambda: build_model("vgg_giant", 3)):
        with pytest.raises(ExportError, match="unknown backbone 'vgg_giant'; choose one of: "
                                              "digits") as err:
            call()
        choices = str(err.value).split("choose one of: ", 1)[1].split(", ")
        assert {DIGITS, *BACKBONES} <= set(choices)
        assert "vgg_giant" not in choices
    with pytest.raises(ExportError, match="vgg_giant"):
        train_folder(shapes, tmp_path / "never", backbone="vgg_giant", profile="smoke",
                     device=torch.device("cpu"))
    assert not (tmp_path / "never").exists()


def test_build_model_imagenet_architecture_without_weights():
    """build_model(ImageNet backbone) builds the architecture with no download."""
    model = build_model("mobilenet_v3_small", 4).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 4)


# ----------------------------------------------------------------- 10. CLI


def test_cli_train_folder(shapes, tmp_path, monkeypatch, capsys):
    """`tl-course train-folder`: exit 0, prints validation accuracy and the majority baseline."""
    monkeypatch.setattr(training, "backbone_model", _digit_factory([]))
    out = tmp_path / "model"
    code = main(["train-folder", str(shapes), "--out", str(out), "--profile", "smoke",
                 "--epochs", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert {p.name for p in out.iterdir()} == EXPORT_FILES
    m = json.loads((out / "model.json").read_text())["metrics"]
    assert f"validation accuracy {m['val_accuracy']:.3f}" in captured.out
    assert f"majority-class baseline {m['majority_baseline']:.3f}" in captured.out
    assert "30 images in 3 classes" in captured.out
    assert str(out / "top_losses.png") in captured.out


def test_cli_predict_writes_csv_and_json(trained, tmp_path, capsys):
    """`tl-course predict DIR`: preds.csv and preds.json with one row per image."""
    images = tmp_path / "new-photos"
    for i, shape in enumerate(SHAPES):
        _save(_shape_image(shape, (220, 60, 60)), images / f"{i}_{shape}.png")
    _save(_shape_image("squares", (60, 60, 220), size=50), images / "big.jpg")
    expected = image_paths([images])
    assert len(expected) == 4
    out = tmp_path / "preds"
    code = main(["predict", str(images), "--model", str(trained["probe"][2]), "--out", str(out),
                 "--top-k", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = json.loads((tmp_path / "preds.json").read_text())
    assert [r["path"] for r in rows] == [str(p) for p in expected]
    assert all(len(r["top"]) == 2 and r["top"][0][0] in SHAPES for r in rows)
    with open(tmp_path / "preds.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["path"] for r in table] == [str(p) for p in expected]
    for r, j in zip(table, rows, strict=True):
        assert r["prediction"] == j["top"][0][0]
        assert float(r["probability"]) == pytest.approx(j["top"][0][1], abs=1e-4)
        assert r["error"] == ""
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".preds", "preds"))) \
        == ["preds.csv", "preds.json"]  # no temp files left
    assert len(captured.out.strip().splitlines()) == 4 + 1


@pytest.mark.parametrize("case", ["valid-pct", "one class", "top-k 0", "empty model folder",
                                  "missing image"])
def test_cli_bad_inputs_give_one_error_line(case, trained, tmp_path, monkeypatch, capsys,
                                            one_error_line):
    """Bad train-folder / predict inputs: exit 1, one `tl-course: error:` line, no traceback."""
    monkeypatch.setattr(training, "backbone_model", _digit_factory([]))
    model = str(trained["probe"][2])
    image = str(next((trained["folder"] / "circles").glob("*.png")))
    one_class = write_shapes(tmp_path / "one", classes=("circles",), n=3)
    (tmp_path / "empty").mkdir()
    argv, needle = {
        "valid-pct": (["train-folder", str(trained["folder"]), "--out", str(tmp_path / "m"),
                       "--valid-pct", "1.5", "--profile", "smoke"], "--valid-pct"),
        "one class": (["train-folder", str(one_class), "--out", str(tmp_path / "m"),
                       "--profile", "smoke", "--epochs", "1"], "one class"),
        "top-k 0": (["predict", image, "--model", model, "--top-k", "0"], "--top-k"),
        "empty model folder": (["predict", image, "--model", str(tmp_path / "empty")],
                               "lacks model.pt and model.json"),
        "missing image": (["predict", str(tmp_path / "nope.png"), "--model", model],
                          "does not exist"),
    }[case]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 1
    assert needle in one_error_line(captured.err)
    assert not (tmp_path / "m").exists()


def test_cli_predict_unreadable_image_exits_1_after_predicting_the_rest(trained, tmp_path,
                                                                       capsys):
    """predict with one unreadable image among good ones: rows for all, exit 1."""
    good = sorted((trained["folder"] / "triangles").glob("*.png"))[:2]
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    out = tmp_path / "p"
    code = main(["predict", str(good[0]), str(bad), str(good[1]), "--model",
                 str(trained["probe"][2]), "--out", str(out)])
    assert code == 1
    rows = json.loads((tmp_path / "p.json").read_text())
    assert ["error" in r for r in rows] == [False, True, False]
    assert "Traceback" not in capsys.readouterr().err


# ----------------------------------------------------------------- 11. demo folder


def test_write_demo_folder(tmp_path, data_root, monkeypatch):
    """write_demo_folder: 5 classes, mixed formats, debris; scan skips exactly the broken jpg."""
    monkeypatch.setenv("TL_COURSE_DATA", str(data_root))
    per_class = (4, 3, 3, 2, 2)
    out = write_demo_folder(tmp_path / "demo", per_class=per_class, root=data_root)
    assert out == tmp_path / "demo"
    assert sorted(d.name for d in out.iterdir() if d.is_dir()) == sorted(CLASS_NAMES)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".png", ".jpg", ".webp", ".bmp", ".txt"}
    assert (out / "five" / ".DS_Store").is_file()
    assert (out / "six" / "notes.txt").is_file()
    broken = out / "seven" / "seven_broken.jpg"
    assert broken.is_file()
    modes = set()
    for p in files:
        if p.suffix in {".png", ".jpg", ".webp", ".bmp"} and p != broken:
            with Image.open(p) as img:
                modes.add(img.mode)
    assert "L" in modes and "RGB" in modes
    scan = scan_folder(out)
    assert [p for p, _ in scan.skipped] == [broken]
    assert scan.classes == sorted(CLASS_NAMES)
    assert scan.counts() == dict(zip(CLASS_NAMES, per_class, strict=True))


def test_write_demo_folder_does_not_rewrite(tmp_path, data_root, monkeypatch):
    """A second call finds the marker file and writes nothing."""
    monkeypatch.setenv("TL_COURSE_DATA", str(data_root))
    out = write_demo_folder(tmp_path / "demo", per_class=(2, 2, 2, 2, 2), root=data_root)
    assert (out / ".complete").is_file()
    victim = out / "five" / "five_000.png"
    victim.unlink()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert write_demo_folder(out, per_class=(2, 2, 2, 2, 2), root=data_root) == out
    assert not victim.exists()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps


def _tiny_export(folder):
    from tl_course.capstone import preprocessing, save_export
    from tl_course.models import DigitCNN

    save_export(DigitCNN(num_classes=2), folder, {"classes": ["a", "b"], "backbone": "digits",
                                                  "preprocess": preprocessing("digits")})
    return folder


def test_model_json_that_is_not_an_object_is_an_export_error(tmp_path):
    """Valid JSON of the wrong shape ([]) gets the clear error, not an AttributeError."""
    from tl_course.capstone import ExportError, load_export

    folder = _tiny_export(tmp_path / "m")
    (folder / "model.json").write_text("[]")
    with pytest.raises(ExportError, match="not a tl-course export"):
        load_export(folder)


def test_model_pt_holding_a_bare_tensor_is_an_export_error(tmp_path):
    """A model.pt that is not a state_dict gets the clear error, not a TypeError."""
    from tl_course.capstone import ExportError, load_export

    folder = _tiny_export(tmp_path / "m")
    torch.save(torch.zeros(3), folder / "model.pt")
    with pytest.raises(ExportError, match="not a state_dict"):
        load_export(folder)


def test_show_cam_draws_the_image_and_the_map():
    """plots.show_cam lays the map over the image (two images on the axis)."""
    import matplotlib

    matplotlib.use("Agg")
    from tl_course.plots import show_cam

    ax = show_cam(torch.rand(1, 8, 8), torch.rand(8, 8), title="x")
    assert len(ax.images) == 2 and ax.get_title() == "x"


def test_probe_mode_exports_the_trained_head_and_leaves_the_body(tmp_path, monkeypatch):
    """Probe mode: the exported body equals the backbone's weights as given, and the
    exported head is the linear probe trained on its features (equal to one trained here
    with the same seed on the same training split)."""
    from tl_course.features import Features, linear_probe

    folder = write_shapes(tmp_path / "shapes")
    store: list = []
    monkeypatch.setattr(training, "backbone_model", _digit_factory(store))
    torch.manual_seed(0)
    out = tmp_path / "out"
    train_folder(folder, out, backbone=DIGITS, mode="probe", valid_pct=0.2, seed=0, epochs=3,
                 profile="smoke", device=torch.device("cpu"), progress=False)
    exported = load_export(out, torch.device("cpu"))
    original = store[0]
    body = {k: v for k, v in original.state_dict().items() if not k.startswith("head")}
    for k, v in body.items():
        assert torch.equal(exported.model.state_dict()[k], v), k
    split = json.loads((out / "split.json").read_text())
    paths = [folder / p for p in split["train"]]
    x = torch.stack([exported.tensor(p) for p in paths])
    y = torch.tensor([SHAPES.index(Path(p).parent.name) for p in split["train"]])
    with torch.no_grad():
        feats = original.eval().features(x)
    head, _ = linear_probe(Features(feats, y), None, len(SHAPES), torch.device("cpu"),
                           epochs=3, lr=1e-2, seed=0)
    assert torch.allclose(exported.model.head[1].weight, head.weight, atol=1e-5)


@pytest.mark.parametrize("edit", [{"channels": 3}, {"image_size": "big"}, {"image_size": 4},
                                  {"mean": [0.1, 0.2]}])
def test_edited_preprocess_is_an_export_error(tmp_path, edit):
    """An edited 'preprocess' that no longer fits the backbone is refused at load time
    (not a crash at the first image, nor silently wrong predictions)."""
    from tl_course.capstone import ExportError, load_export

    folder = _tiny_export(tmp_path / "m")
    meta = json.loads((folder / "model.json").read_text())
    meta["preprocess"].update(edit)
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="does not fit backbone"):
        load_export(folder)


def test_save_uploads_accepts_the_ipywidgets_7_dict(tmp_path):
    """ipywidgets 7's FileUpload.value is a dict by file name; both formats are saved."""
    from tl_course.capstone import save_uploads

    png = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(png, format="PNG")
    v7 = {"red.png": {"content": png.getvalue(), "metadata": {}}}
    v8 = ({"name": "../../evil/red2.png", "content": memoryview(png.getvalue())},)
    saved = save_uploads(v7, tmp_path, "red") + save_uploads(v8, tmp_path, "red")
    assert sorted(p.name for p in saved) == ["red.png", "red2.png"]
    assert all(p.parent == tmp_path / "red" for p in saved)  # never a path from the browser


def test_demo_folder_is_rebuilt_when_its_settings_change(tmp_path, monkeypatch):
    """The marker records the settings: other sizes or seed give a fresh folder."""
    from tl_course.capstone import scan_folder, write_demo_folder

    monkeypatch.setenv("TL_COURSE_DATA", str(tmp_path / "data"))
    out = tmp_path / "demo"
    write_demo_folder(out, per_class=(3, 3, 3, 3, 3), root=tmp_path / "data", debris=False)
    assert len(scan_folder(out).paths) == 15
    write_demo_folder(out, per_class=(4, 2, 2, 2, 2), root=tmp_path / "data", debris=False)
    assert scan_folder(out).counts()["five"] == 4 and len(scan_folder(out).paths) == 12


def test_a_folder_too_big_for_memory_is_refused_with_a_smaller_size():
    """check_memory names the image size that would fit."""
    from tl_course.capstone import FolderError, preprocessing
    from tl_course.capstone.training import check_memory

    check_memory(100, preprocessing("resnet18"))
    with pytest.raises(FolderError, match="--image-size"):
        check_memory(100_000, preprocessing("resnet18"))
