"""Digit domains: MNIST-M built the Ganin way, deterministic and cached; domain pairs; USPS."""

from __future__ import annotations

import bz2
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import tl_course.data as data
import tl_course.domains as domains
from tl_course.data import DataUnavailableError, load_digits
from tl_course.domains import (
    UnknownDomainError,
    blend_mnist_m,
    fetch_usps,
    halves,
    load_domains,
    load_photos,
    make_mnist_m,
    to_rgb,
)
from tl_course.profile import PROFILES

SMOKE, CPU = PROFILES["smoke"], PROFILES["cpu"]


def _digits(n: int = 12, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, 28, 28, generator=gen), torch.arange(n) % 10)


@pytest.fixture(autouse=True)
def mnist_sample_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read the offline MNIST sample once per session: it is real data, but slow to parse."""
    monkeypatch.setattr(data, "mnist_sample", _cached_mnist_sample)


_ORIGINAL_SAMPLE = data.mnist_sample


@functools.lru_cache(maxsize=1)
def _cached_mnist_sample():
    return _ORIGINAL_SAMPLE()


def _forbid_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("the network must not be touched here")

    monkeypatch.setattr(data, "network_available", boom)


def test_blend_is_abs_difference_of_photo_and_binarised_digit():
    digits = _digits(4).tensors[0]
    photo = np.empty((40, 50, 3), dtype=np.uint8)
    photo[:] = (10, 200, 100)  # one colour, so every crop is known
    out = blend_mnist_m(digits, [photo], seed=0)
    assert out.shape == (4, 3, 28, 28) and out.dtype == torch.uint8
    stroke = (digits[:, 0] > 0.5).unsqueeze(1).expand(-1, 3, -1, -1)
    colour = torch.tensor([10, 200, 100], dtype=torch.uint8).view(1, 3, 1, 1).expand_as(out)
    assert torch.equal(out[~stroke], colour[~stroke])  # background: the photo
    assert torch.equal(out[stroke], (255 - colour)[stroke])  # stroke: inverted photo


def test_mnist_m_is_deterministic_for_a_seed_and_differs_between_seeds(data_root: Path):
    ds = _digits()
    a = make_mnist_m(ds, seed=3, root=data_root)
    b = blend_mnist_m(ds.tensors[0], load_photos(), seed=3).float() / 255
    c = make_mnist_m(ds, seed=4, root=data_root)
    assert torch.equal(a.tensors[0], b)
    assert not torch.equal(a.tensors[0], c.tensors[0])
    x = a.tensors[0]
    assert x.shape == (12, 3, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05
    assert torch.equal(a.tensors[1], ds.tensors[1])  # labels preserved


def test_mnist_m_cache_file_is_written_and_reused(data_root: Path, monkeypatch):
    ds = _digits()
    first = make_mnist_m(ds, seed=0, root=data_root)
    files = list((data_root / "mnist_m").glob("*.pt"))
    assert len(files) == 1 and not list((data_root / "mnist_m").glob(".*"))  # no temp left
    saved = torch.load(files[0], weights_only=True)
    assert saved["images"].dtype == torch.uint8

    def boom(*args, **kwargs):
        raise AssertionError("cached MNIST-M should be loaded, not rebuilt")

    monkeypatch.setattr(domains, "blend_mnist_m", boom)
    again = make_mnist_m(ds, seed=0, root=data_root)
    assert torch.equal(first.tensors[0], again.tensors[0])
    with pytest.raises(AssertionError, match="rebuilt"):
        make_mnist_m(_digits(seed=1), seed=0, root=data_root)  # other digits: other file


def test_blend_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        blend_mnist_m(torch.rand(2, 3, 28, 28), load_photos(), seed=0)
    with pytest.raises(ValueError, match="photo"):
        blend_mnist_m(torch.rand(2, 1, 28, 28), [], seed=0)


def test_to_rgb_and_halves():
    ds = _digits(11)
    rgb = to_rgb(ds)
    assert rgb.tensors[0].shape == (11, 3, 28, 28)
    assert torch.equal(rgb.tensors[0][:, 2], ds.tensors[0][:, 0])
    a, b = halves(ds, seed=0)
    assert len(a) + len(b) == 11
    rows = lambda t: {tuple(r.flatten().tolist()[:20]) for r in t.tensors[0]}
    assert not rows(a) & rows(b)
    with pytest.raises(ValueError, match="shape"):
        to_rgb(TensorDataset(torch.rand(2, 28, 28), torch.zeros(2)))


def test_mnist_to_mnist_m_pair_is_offline_three_channel_and_disjoint(data_root, monkeypatch):
    _forbid_network(monkeypatch)
    pair = load_domains("mnist_m", SMOKE, root=data_root)
    for ds in (pair.source.train, pair.source.test, pair.target.train, pair.target.test):
        x = ds.tensors[0]
        assert x.shape[1:] == (3, 28, 28) and 0 <= x.min() and x.max() <= 1
    # The target's training images come from the other half of MNIST's training set.
    mnist = load_digits("mnist", SMOKE, data_root)
    first, second = halves(mnist.train, seed=0)
    assert torch.equal(pair.source.train.tensors[0][:, :1], first.tensors[0])
    assert torch.equal(pair.target.train.tensors[1], second.tensors[1])
    key = lambda t: {hash(r.numpy().tobytes()) for r in (t > 0.5)}
    assert not key(first.tensors[0]) & key(second.tensors[0])


def test_uci_target_and_unknown_target(data_root):
    source, target = load_domains("uci_digits", SMOKE, root=data_root)
    assert (source.name, target.name) == ("mnist", "uci_digits")
    assert target.train.tensors[0].shape[1:] == (3, 28, 28)
    with pytest.raises(UnknownDomainError, match="mnist_m"):
        load_domains("mnistm", SMOKE, root=data_root)


@pytest.mark.parametrize("profile", [SMOKE, CPU], ids=["smoke", "cpu-offline"])
def test_usps_missing_says_how_to_fetch(data_root, monkeypatch, profile):
    if profile is SMOKE:
        _forbid_network(monkeypatch)  # smoke never downloads
    with pytest.raises(DataUnavailableError, match="tl-course fetch usps"):
        load_domains("usps", profile, root=data_root)
    with pytest.raises(DataUnavailableError, match="tl-course fetch svhn"):
        load_domains("svhn", profile, root=data_root)


def test_fetch_usps_offline_is_a_clear_error(data_root):
    with pytest.raises(DataUnavailableError, match="tl-course fetch usps"):
        fetch_usps(data_root)
    assert not (data_root / "usps").exists()


def test_cached_usps_loads_through_torchvision(data_root):
    folder = data_root / "usps"
    folder.mkdir()
    for name, n in (("usps.bz2", 20), ("usps.t.bz2", 10)):
        lines = [f"{i % 10 + 1} " + " ".join(f"{j + 1}:{(j % 3) - 1}" for j in range(256))
                 for i in range(n)]
        (folder / name).write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
    pair = load_domains("usps", SMOKE, root=data_root)
    x, y = pair.target.train.tensors
    assert x.shape == (20, 3, 28, 28) and 0 <= x.min() and x.max() <= 1
    assert sorted(set(y.tolist())) == list(range(10))
    assert x[:, :, :4].abs().max() == 0  # padded like MNIST's 20x20 box in 28x28


# ----------------------------------------------------------------- defining properties (issue 17)


def test_mnist_m_test_images_get_new_background_crops(data_root, monkeypatch):
    """Test digits are blended over other crops than the training digits: were the same
    seed used for both, image i of each would share its background exactly."""
    _forbid_network(monkeypatch)
    pair = load_domains("mnist_m", SMOKE, root=data_root)
    mnist = load_digits("mnist", SMOKE, data_root)
    _, second = halves(mnist.train, seed=0)
    n = min(len(second), len(mnist.test))
    blank = ((second.tensors[0][:n, 0] <= 0.5) & (mnist.test.tensors[0][:n, 0] <= 0.5))
    train_x, test_x = pair.target.train.tensors[0][:n], pair.target.test.tensors[0][:n]
    same = [torch.equal(train_x[i][:, blank[i]], test_x[i][:, blank[i]]) for i in range(n)]
    assert sum(same) < 0.05 * n


def test_load_domains_labels_each_image_with_its_own_digit(data_root, monkeypatch):
    """Every target image is the MNIST-M blend of the digit with the same index: the
    labels travel with the images (source: the first half, target: the second)."""
    _forbid_network(monkeypatch)
    pair = load_domains("mnist_m", SMOKE, root=data_root)
    mnist = load_digits("mnist", SMOKE, data_root)
    first, second = halves(mnist.train, seed=0)
    assert torch.equal(pair.source.train.tensors[1], first.tensors[1])
    want = make_mnist_m(second, seed=0, root=data_root)
    assert torch.equal(pair.target.train.tensors[0], want.tensors[0])
    assert torch.equal(pair.target.train.tensors[1], second.tensors[1])
    assert torch.equal(pair.target.test.tensors[1], mnist.test.tensors[1])
