"""MultiMNIST: the overlay is the Sener & Koltun construction, labels are right, builds are
deterministic for a seed, pairs stay within their split, and the cache is reused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import tl_course.multimnist as mm
from tl_course.data import DigitsData
from tl_course.multimnist import (
    IGNORE,
    MultiTaskDataset,
    build_multimnist,
    compose_pairs,
    make_pairs,
    overlay_canvas,
)


def _digits(n_train: int = 24, n_test: int = 12) -> DigitsData:
    gen = torch.Generator().manual_seed(0)
    make = lambda n: TensorDataset(torch.rand(n, 1, 28, 28, generator=gen), torch.arange(n) % 10)
    return DigitsData("mnist", make(n_train), make(n_test), "random test digits")


def test_overlay_is_max_of_left_and_shifted_right():
    left, right = torch.zeros(1, 1, 28, 28), torch.zeros(1, 1, 28, 28)
    left[..., 10, 10] = 0.3
    left[..., 16, 16] = 0.9  # lands on the right digit's (10, 10) after the 6 px shift
    right[..., 10, 10] = 0.5
    right[..., 0, 0] = 0.7
    canvas = overlay_canvas(left, right)
    assert canvas.shape == (1, 1, 36, 36)
    assert canvas[0, 0, 10, 10] == 0.3  # left only
    assert canvas[0, 0, 16, 16] == 0.9  # max(0.9, 0.5)
    assert canvas[0, 0, 6, 6] == 0.7  # right's top-left corner moved 6 right and 6 down
    expected = torch.zeros(1, 1, 36, 36)
    expected[..., :28, :28] = left
    expected[..., 6:34, 6:34] = torch.maximum(expected[..., 6:34, 6:34], right)
    assert torch.equal(canvas, expected)


def test_compose_resizes_the_canvas_to_28x28():
    gen = torch.Generator().manual_seed(1)
    left, right = torch.rand(3, 1, 28, 28, generator=gen), torch.rand(3, 1, 28, 28, generator=gen)
    out = compose_pairs(left, right)
    ref = F.interpolate(overlay_canvas(left, right), size=(28, 28), mode="bilinear",
                        align_corners=False, antialias=True).clamp(0, 1)
    assert out.shape == (3, 1, 28, 28) and torch.allclose(out, ref)


def test_pairs_labels_and_determinism():
    digits = _digits()
    x, y = digits.train.tensors
    a = make_pairs(x, y, pairs_per_image=3, seed=4)
    b = make_pairs(x, y, pairs_per_image=3, seed=4)
    c = make_pairs(x, y, pairs_per_image=3, seed=5)
    assert len(a) == 3 * len(x) and a.images.shape == (72, 1, 28, 28)
    assert torch.equal(a.images, b.images)
    assert all(torch.equal(a.labels[t], b.labels[t]) for t in a.tasks)
    assert not torch.equal(a.images, c.images)
    assert a.images.min() >= 0 and a.images.max() <= 1
    assert torch.equal(a.labels["sum"], a.labels["left"] + a.labels["right"])
    assert torch.equal(a.labels["parity"], a.labels["left"] % 2)
    assert set(a.tasks) == set(mm.TASKS)
    # Every image is the left digit of exactly 3 pairs.
    assert torch.equal(a.labels["left"], y.repeat(3))


def test_each_pair_is_its_two_digits():
    # Digits whose label is readable from the image: image i is constant i / 100.
    n = 10
    x = (torch.arange(n).float() / 100).view(n, 1, 1, 1).expand(n, 1, 28, 28).clone()
    y = torch.arange(n)
    pairs = make_pairs(x, y, pairs_per_image=2, seed=0)
    for i in range(len(pairs)):
        left, right = int(pairs.labels["left"][i]), int(pairs.labels["right"][i])
        assert left != right  # never paired with itself
        expected = compose_pairs(x[left:left + 1], x[right:right + 1])
        got = pairs.images[i:i + 1]
        assert torch.allclose(got, (expected * 255).round() / 255, atol=1e-6)


def test_train_and_test_pairs_come_from_their_own_split(data_root):
    train = TensorDataset(torch.full((8, 1, 28, 28), 0.2), torch.arange(8) % 10)
    test = TensorDataset(torch.full((6, 1, 28, 28), 0.8), torch.arange(6) % 10)
    built = build_multimnist(DigitsData("mnist", train, test, "split test"), root=data_root)
    # Train digits are all 0.2 bright, test digits 0.8: no pair mixes the two.
    assert built.train.images.max() == pytest.approx(0.2, abs=1e-2)
    assert built.test.images.max() == pytest.approx(0.8, abs=1e-2)


def test_sizes_follow_the_requested_pairs(data_root):
    built = build_multimnist(_digits(20, 10), train_pairs=50, test_pairs=10, root=data_root)
    assert len(built.train) == 60 and len(built.test) == 10  # ceil(50 / 20) = 3 per image


def test_cache_is_written_atomically_and_reused(data_root, monkeypatch):
    digits = _digits()
    first = build_multimnist(digits, seed=3, root=data_root)
    assert first.path is not None and first.path.exists()
    assert first.path.parent == data_root / "multimnist"
    assert not [p for p in first.path.parent.iterdir() if p.name.startswith(".")]

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt instead of loading the cache")

    monkeypatch.setattr(mm, "make_pairs", fail)
    again = build_multimnist(digits, seed=3, root=data_root)
    assert again.path == first.path
    assert torch.equal(again.train.images, first.train.images)
    assert all(torch.equal(again.test.labels[t], first.test.labels[t]) for t in first.test.tasks)
    # A different seed is a different file.
    monkeypatch.undo()
    other = build_multimnist(digits, seed=4, root=data_root)
    assert other.path != first.path


def test_batches_are_images_and_a_dict_of_labels():
    ds = make_pairs(*_digits().train.tensors, seed=0)
    x, labels = next(iter(DataLoader(ds, batch_size=5)))
    assert x.shape == (5, 1, 28, 28) and set(labels) == set(mm.TASKS)
    assert all(v.shape == (5,) and v.dtype == torch.int64 for v in labels.values())


def test_keep_labels_hides_the_rest():
    ds = make_pairs(*_digits().train.tensors, seed=0)
    scarce = ds.keep_labels("left", 5, seed=0)
    assert int((scarce.labels["left"] != IGNORE).sum()) == 5
    assert torch.equal(scarce.labels["right"], ds.labels["right"])
    assert len(scarce.labelled("left")) == 5
    assert (ds.labels["left"] != IGNORE).all()  # the original is untouched


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        MultiTaskDataset(torch.zeros(3, 28, 28), {"left": torch.zeros(3)})
    with pytest.raises(ValueError, match="labels of task 'left'"):
        MultiTaskDataset(torch.zeros(3, 1, 28, 28), {"left": torch.zeros(4)})
    ds = make_pairs(*_digits().train.tensors, seed=0)
    with pytest.raises(KeyError, match="unknown task 'colour'"):
        ds.with_tasks(["colour"])
    with pytest.raises(ValueError, match="at least 2 images"):
        make_pairs(torch.zeros(1, 1, 28, 28), torch.zeros(1))
    with pytest.raises(ValueError, match="does not fit"):
        overlay_canvas(torch.zeros(1, 1, 28, 28), torch.zeros(1, 1, 28, 28), shift=10)
