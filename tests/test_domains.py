"""Digit domains: MNIST-M built the Ganin way, deterministic and cached; domain pairs; USPS."""

from __future__ import annotations

import bz2
import dataclasses
import fractions
import functools
import hashlib
import inspect
import io
import re
from pathlib import Path
from urllib.parse import urlparse

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
    fetch_svhn,
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


# ----------------------------------------------------------------- USPS / SVHN: fetch, cache, load


def _usps_file(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A USPS file in the libsvm format torchvision reads (values in [-1, 1], labels 1..10):
    (bz2 bytes, images (n, 16, 16) in [0, 1] as torchvision stores them, digits 0..9)."""
    rng = np.random.default_rng(seed)
    values = rng.integers(-4, 5, size=(n, 256)) / 4  # exact in float32
    digits = np.arange(n) % 10
    lines = [f"{d + 1} " + " ".join(f"{j + 1}:{v}" for j, v in enumerate(row))
             for d, row in zip(digits, values, strict=True)]
    blob = bz2.compress(("\n".join(lines) + "\n").encode())
    images = ((values.astype(np.float32) + 1) / 2 * 255).astype(np.uint8) / 255.0
    return blob, images.reshape(n, 16, 16), digits


def _svhn_file(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A .mat file like SVHN's (X: 32x32x3xN uint8, y: 1..10 where 10 is the digit 0):
    (bytes, images (n, 3, 32, 32) uint8, digits 0..9)."""
    import scipy.io

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    images[0] = 255  # white: resizing must not overshoot 1
    digits = np.arange(n) % 10
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"X": images.transpose(2, 3, 1, 0),
                           "y": np.where(digits == 0, 10, digits).reshape(n, 1).astype(np.uint8)})
    return buf.getvalue(), images, digits


def _bilinear(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a 2-D array with half-pixel centres (align_corners=False)."""

    def axis(n_in: int):
        src = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, None)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    ylo, yhi, wy = axis(img.shape[0])
    xlo, xhi, wx = axis(img.shape[1])
    rows = img[ylo] * (1 - wy)[:, None] + img[yhi] * wy[:, None]
    return rows[:, xlo] * (1 - wx) + rows[:, xhi] * wx


def _mnist_framed(img: np.ndarray, box: int = 20) -> np.ndarray:
    """The digit resized to a `box` square in the middle of a black 28x28 frame, in [0, 1]."""
    out = np.zeros((28, 28))
    pad = (28 - box) // 2
    out[pad:pad + box, pad:pad + box] = np.clip(_bilinear(img, box), 0, 1)
    return out


class _FakeServer:
    """Stands in for torchvision's download_url in the USPS and SVHN modules: serves the
    bytes registered for a URL and, like torchvision, refuses a file whose MD5 is wrong."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path):
        import torchvision.datasets.svhn as tv_svhn
        import torchvision.datasets.usps as tv_usps

        self.monkeypatch, self.root = monkeypatch, root
        self.files: dict[str, bytes] = {}
        self.fetched: list[str] = []
        for module in (tv_usps, tv_svhn):
            monkeypatch.setattr(module, "download_url", self.download_url)

    def serve(self, cls, split: str, content: bytes, published: bytes | None = None) -> None:
        """Serve `content` for `split`; the checksum torchvision checks is that of `published`."""
        url, filename, _ = cls.split_list[split]
        self.files[url] = content
        md5 = hashlib.md5(content if published is None else published).hexdigest()
        self.monkeypatch.setitem(cls.split_list, split, [url, filename, md5])

    def download_url(self, url, root, filename=None, md5=None, **kwargs):
        folder = Path(root)
        # Atomic: downloads land in a hidden temp folder beside the final one.
        assert folder.parent == self.root and folder.name.startswith("."), folder
        self.fetched.append(url)
        path = folder / (filename or url.rsplit("/", 1)[-1])
        path.write_bytes(self.files[url])
        if md5 is not None and hashlib.md5(path.read_bytes()).hexdigest() != md5:
            raise RuntimeError("File not found or corrupted.")


@pytest.fixture
def server(monkeypatch, data_root) -> _FakeServer:
    return _FakeServer(monkeypatch, data_root)


def _online(monkeypatch) -> list:
    """Pretend the network is up; returns the list of hosts probed."""
    hosts = []
    monkeypatch.setattr(data, "network_available", lambda host, *a, **k: hosts.append(host) or True)
    return hosts


def test_resize_pad_frames_digits_like_mnist():
    """_resize_pad: bilinear (half-pixel) resize into a centred box of a black 28x28 frame,
    clipped to [0, 1]; 20x20 by default, like MNIST's digits."""
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 0.5
    for box, out in ((20, domains._resize_pad(x.clone())), (12, domains._resize_pad(x, box=12))):
        want = np.stack([_mnist_framed(img[0].double().numpy(), box) for img in x])
        assert out.shape == (3, 1, 28, 28)
        np.testing.assert_allclose(out[:, 0].numpy(), want, atol=1e-5)
        assert out.min() == 0 and out.max() == 1


def test_fetch_usps_downloads_both_splits_atomically_and_loads_them(data_root, server, monkeypatch):
    """fetch_usps probes torchvision's USPS host, downloads the train and test files through
    torchvision into a temp folder renamed to root/usps, and does nothing once cached; the
    loaded images are the USPS digits framed like MNIST, labelled with their digit."""
    from torchvision.datasets import USPS

    (train, x_train, y_train), (test, x_test, y_test) = _usps_file(20, 0), _usps_file(10, 1)
    server.serve(USPS, "train", train)
    server.serve(USPS, "test", test)
    hosts = _online(monkeypatch)
    assert fetch_usps(data_root) == data_root / "usps"
    assert hosts == [urlparse(USPS.split_list["train"][0]).hostname]
    assert [p.name for p in data_root.iterdir()] == ["usps"]  # no temp folder left
    assert (data_root / "usps" / "usps.bz2").read_bytes() == train
    assert (data_root / "usps" / "usps.t.bz2").read_bytes() == test
    assert fetch_usps(data_root) == data_root / "usps" and len(server.fetched) == 2  # cached
    _forbid_network(monkeypatch)
    pair = load_domains("usps", SMOKE, root=data_root)
    for ds, x, y in ((pair.target.train, x_train, y_train), (pair.target.test, x_test, y_test)):
        want = np.stack([_mnist_framed(img) for img in x])[:, None].repeat(3, axis=1)
        assert ds.tensors[0].dtype == torch.float32 and ds.tensors[1].dtype == torch.int64
        np.testing.assert_allclose(ds.tensors[0].numpy(), want, atol=1e-5)
        assert ds.tensors[1].tolist() == y.tolist()


def test_fetch_svhn_downloads_both_splits_atomically_and_loads_them(data_root, server, monkeypatch):
    """fetch_svhn probes torchvision's SVHN host, downloads train and test through
    torchvision into a temp folder renamed to root/svhn, and does nothing once cached; the
    loaded images are the colour digits resized (antialiased bilinear, as PIL does) to 28x28
    in [0, 1], labelled 0..9 (SVHN's label 10 is the digit 0)."""
    from PIL import Image
    from torchvision.datasets import SVHN

    (train, x_train, y_train), (test, x_test, y_test) = _svhn_file(12, 0), _svhn_file(6, 1)
    server.serve(SVHN, "train", train)
    server.serve(SVHN, "test", test)
    hosts = _online(monkeypatch)
    assert fetch_svhn(data_root) == data_root / "svhn"
    assert hosts == [urlparse(SVHN.split_list["train"][0]).hostname]
    assert [p.name for p in data_root.iterdir()] == ["svhn"]  # no temp folder left
    assert (data_root / "svhn" / "train_32x32.mat").read_bytes() == train
    assert (data_root / "svhn" / "test_32x32.mat").read_bytes() == test
    assert fetch_svhn(data_root) == data_root / "svhn" and len(server.fetched) == 2  # cached
    _forbid_network(monkeypatch)
    pair = load_domains("svhn", SMOKE, root=data_root)
    resize = lambda c: np.asarray(Image.fromarray(c, mode="F").resize((28, 28), Image.BILINEAR))
    for ds, x, y in ((pair.target.train, x_train, y_train), (pair.target.test, x_test, y_test)):
        want = np.stack([[resize(c.astype(np.float32) / 255) for c in img] for img in x])
        got = ds.tensors[0]
        assert got.dtype == torch.float32 and 0 <= got.min() and got.max() <= 1
        np.testing.assert_allclose(got.numpy(), np.clip(want, 0, 1), atol=1e-4)
        assert ds.tensors[1].dtype == torch.int64 and ds.tensors[1].tolist() == y.tolist()
    assert len(server.fetched) == 2  # loading never downloads


@pytest.mark.parametrize("name", ["usps", "svhn"])
def test_fetch_refuses_a_corrupt_download_and_leaves_nothing(data_root, server, monkeypatch, name):
    """A download whose checksum is wrong fails as DataUnavailableError naming the fetch
    command, and neither the dataset folder nor a temp folder is left behind."""
    from torchvision.datasets import SVHN, USPS

    cls, fetch, splits = {"usps": (USPS, fetch_usps, ("train", "test")),
                          "svhn": (SVHN, fetch_svhn, ("train", "test"))}[name]
    server.serve(cls, splits[0], b"good")
    server.serve(cls, splits[1], b"truncated", published=b"the real file")
    _online(monkeypatch)
    with pytest.raises(DataUnavailableError, match=f"downloading {name} .*tl-course fetch {name}"):
        fetch(data_root)
    assert list(data_root.iterdir()) == []
    assert not (domains.usps_cached(data_root) or domains.svhn_cached(data_root))


@pytest.mark.parametrize("name", ["usps", "svhn"])
def test_fetch_offline_says_what_is_missing_and_downloads_nothing(data_root, server, name):
    """Offline, a fetch names the dataset, the folder it is missing from, the fetch command
    and the data variable, without trying to download."""
    fetch = {"usps": fetch_usps, "svhn": fetch_svhn}[name]
    msg = (f"{name.upper()} is not in {re.escape(str(data_root / name))} and there is no "
           f"network.*tl-course fetch {name}.*{data.DATA_ENV}")
    with pytest.raises(DataUnavailableError, match=msg):
        fetch(data_root)
    assert server.fetched == [] and list(data_root.iterdir()) == []


def _usps_reference(x: np.ndarray) -> np.ndarray:
    return np.stack([_mnist_framed(img) for img in x])[:, None].repeat(3, axis=1)


def _svhn_reference(x: np.ndarray) -> np.ndarray:
    from PIL import Image

    resize = lambda c: np.asarray(Image.fromarray(c, mode="F").resize((28, 28), Image.BILINEAR))
    return np.clip(np.stack([[resize(c.astype(np.float32) / 255) for c in img] for img in x]), 0, 1)


@pytest.mark.parametrize("name", ["usps", "svhn"])
def test_usps_and_svhn_read_the_given_folder_and_draw_the_course_subsets(
        data_root, tmp_path, server, monkeypatch, name):
    """load_usps / load_svhn read root/<name> (the data cache when no root is given) and cap
    train / test at the profile's sizes with data.subset's draw at the seeds every course
    loader uses (1 for train, 2 for test), labels travelling with their images."""
    from torchvision.datasets import SVHN, USPS

    _forbid_network(monkeypatch)
    cls, make, files, reference, load, source = {
        "usps": (USPS, _usps_file, ("usps.bz2", "usps.t.bz2"), _usps_reference,
                 domains.load_usps, "USPS (torchvision)"),
        "svhn": (SVHN, _svhn_file, ("train_32x32.mat", "test_32x32.mat"), _svhn_reference,
                 domains.load_svhn, "SVHN (torchvision)"),
    }[name]
    other = tmp_path / "elsewhere"
    (other / name).mkdir(parents=True)
    made = []
    for split, filename, n, seed in (("train", files[0], 20, 0), ("test", files[1], 10, 1)):
        blob, x, y = make(n, seed)
        server.serve(cls, split, blob)  # the checksum torchvision checks (SVHN) is this file's
        (other / name / filename).write_bytes(blob)
        made.append(TensorDataset(torch.from_numpy(reference(x)).float(), torch.from_numpy(y)))
    tiny = dataclasses.replace(SMOKE, train_size=5, test_size=3)
    got = load_domains(name, tiny, root=other).target
    (other / name).rename(data_root / name)
    again = load(tiny)  # no root: the data cache folder
    assert (got.name, got.source) == (name, source)
    for ds, ds_again, full, n, seed in ((got.train, again.train, made[0], 5, 1),
                                        (got.test, again.test, made[1], 3, 2)):
        want = data.subset(full, n, seed=seed)
        np.testing.assert_allclose(ds.tensors[0].numpy(), want.tensors[0].numpy(), atol=1e-4)
        assert torch.equal(ds.tensors[1], want.tensors[1].long())
        assert all(torch.equal(a, b) for a, b in zip(ds.tensors, ds_again.tensors, strict=True))


# ----------------------------------------------------------------- MNIST-M photos and cache


def test_load_photos_keeps_colour_photos_as_rgb_uint8_and_skips_the_rest(monkeypatch):
    """load_photos returns (H, W, 3) uint8 photos larger than a 28x28 crop, skipping names
    that are missing, need a download, are grey or have too few channels; none left is a
    DataUnavailableError."""
    import skimage.data

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 50, 4), dtype=np.uint8)
    floaty = rng.integers(0, 256, (29, 31, 3)).astype(np.float64)

    def needs_download():
        raise OSError("would download")

    fakes = {"t_remote": needs_download, "t_grey": lambda: rgba[:, :, 0],
             "t_two": lambda: rgba[:, :, :2], "t_rgba": lambda: rgba, "t_float": lambda: floaty}
    for name, fake in fakes.items():
        monkeypatch.setattr(skimage.data, name, fake, raising=False)
    photos = load_photos(("t_missing", "t_remote", "t_grey", "t_two", "t_rgba", "t_float"))
    assert [p.dtype for p in photos] == [np.uint8, np.uint8]
    assert np.array_equal(photos[0], rgba[:, :, :3])
    assert np.array_equal(photos[1], floaty.astype(np.uint8))
    with pytest.raises(DataUnavailableError, match="scikit-image"):
        load_photos(("t_missing", "t_grey"))


def test_mnist_m_cache_file_is_keyed_by_8bit_digits_seed_and_photos(data_root):
    """The cache key is the digits as 8-bit pixels (values outside [0, 1] count as 0 / 1,
    which blend the same), the seed and the photo list."""
    q = (_digits(6).tensors[0] * 255).round() / 255
    name = lambda d, seed=0, photos=domains.PHOTO_NAMES: domains.mnist_m_cache_file(
        d, seed, data_root, photos)
    noise = (torch.rand(q.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 0.4 / 255
    assert name(q + noise) == name(q)
    wild, tame = q.clone(), q.clone()
    wild[:, :, :5], wild[:, :, 5:10] = 1.6, -0.7
    tame[:, :, :5], tame[:, :, 5:10] = 1.0, 0.0
    assert name(wild) == name(tame) != name(q)
    assert len({name(q), name(q, seed=1), name(q, photos=("coffee",)), name(q[:5])}) == 4
    assert name(q).parent == data_root / "mnist_m" and name(q).suffix == ".pt"


def test_mnist_m_cache_names_are_stable_across_machines(data_root):
    """The cache name is sha1(8-bit digits, then 'seed|photo,names|vN'), 16 hex digits: an
    MNIST-M cache copied from another machine (e.g. in a course kit) is found again."""
    x = _digits(3).tensors[0]
    photos = ("coffee", "rocket")
    h = hashlib.sha1(np.round(x.numpy() * np.float32(255)).astype(np.uint8).tobytes())
    h.update(f"7|coffee,rocket|v{domains._MNIST_M_VERSION}".encode())
    want = data_root / "mnist_m" / f"mnist_m-{h.hexdigest()[:16]}.pt"
    assert domains.mnist_m_cache_file(x, 7, data_root, photos) == want


def test_make_mnist_m_caches_where_told_and_rebuilds_damaged_or_untrusted_files(
        data_root, tmp_path, monkeypatch):
    """make_mnist_m caches in the data folder (or the given root) a file with the uint8
    images and labels; its default seed is load_domains'; a photo list gets its own file;
    a damaged file, or one that is not plain tensors (weights_only), is rebuilt."""
    ds = _digits(6)
    seed = inspect.signature(load_domains).parameters["seed"].default
    blend = lambda names=domains.PHOTO_NAMES: blend_mnist_m(ds.tensors[0], load_photos(names), seed)
    want = blend()
    assert torch.equal(make_mnist_m(ds).tensors[0], want.float() / 255)
    [path] = (data_root / "mnist_m").glob("*.pt")
    saved = torch.load(path, weights_only=True)
    assert torch.equal(saved["images"], want) and torch.equal(saved["labels"], ds.tensors[1])
    other = tmp_path / "other"
    make_mnist_m(ds, root=other)
    coffee = make_mnist_m(ds, root=other, photo_names=("coffee",))
    assert torch.equal(coffee.tensors[0], blend(("coffee",)).float() / 255)
    assert len(list((other / "mnist_m").glob("*.pt"))) == 2
    assert len(list((data_root / "mnist_m").glob("*.pt"))) == 1
    path.write_bytes(b"not a torch file")
    assert torch.equal(make_mnist_m(ds).tensors[0], want.float() / 255)
    torch.save({"images": torch.zeros_like(want), "labels": ds.tensors[1],
                "note": fractions.Fraction(1, 3)}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch < 2.6's default
    assert torch.equal(make_mnist_m(ds).tensors[0], want.float() / 255)


# ----------------------------------------------------------------- blend, halves, to_rgb, pairs


def test_blend_crops_every_position_of_every_photo_and_threshold_is_strict():
    """Crops are drawn over every 28x28 position of every photo (read back from a photo
    whose pixels encode their row and column), and a stroke is a pixel strictly above the
    threshold: with threshold 0, blank pixels stay background."""
    photos = []
    for k, (h, w) in enumerate(((30, 31), (29, 32))):
        photo = np.zeros((h, w, 3), dtype=np.uint8)
        photo[..., 0] = np.arange(h)[:, None]
        photo[..., 1] = np.arange(w)[None, :]
        photo[..., 2] = 100 * k
        photos.append(photo)
    digits = torch.zeros(300, 1, 28, 28)
    digits[:, 0, 27, 27] = 0.5
    out = blend_mnist_m(digits, photos, seed=0, threshold=0.0).numpy()
    top, left, k = out[:, 0, 0, 0], out[:, 1, 0, 0], out[:, 2, 0, 0] // 100
    for j, (h, w) in enumerate(((30, 31), (29, 32))):
        assert set(top[k == j]) == set(range(h - 27)) and set(left[k == j]) == set(range(w - 27))
    # blank pixels show the crop, the one ink pixel (0.5 > 0) the inverted crop
    assert np.array_equal(out[:, :2, 27, 26], np.stack([top + 27, left + 26], 1))
    assert np.array_equal(out[:, :2, 27, 27], 255 - np.stack([top + 27, left + 27], 1))
    at = blend_mnist_m(digits, photos, seed=0, threshold=0.5).numpy()
    assert np.array_equal(at[:, :2, 27, 27], np.stack([top + 27, left + 27], 1))  # 0.5 > 0.5: no


def test_halves_are_disjoint_halves_at_load_domains_seed():
    """halves splits n examples into n // 2 and the rest (disjoint, covering all, from two
    examples up), by default at load_domains' seed."""
    for n in (2, 11):
        ds = TensorDataset(torch.arange(n), torch.arange(n) % 10)
        a, b = halves(ds)
        assert (len(a), len(b)) == (n // 2, n - n // 2)
        assert sorted(a.tensors[0].tolist() + b.tensors[0].tolist()) == list(range(n))
        assert torch.equal(a.tensors[1], a.tensors[0] % 10)  # labels travel with examples
    seed = inspect.signature(load_domains).parameters["seed"].default
    ds = TensorDataset(torch.arange(40), torch.arange(40))
    assert torch.equal(halves(ds)[0].tensors[0], halves(ds, seed=seed)[0].tensors[0])
    assert not torch.equal(halves(ds)[0].tensors[0], halves(ds, seed=seed + 1)[0].tensors[0])
    with pytest.raises(ValueError, match="at least 2"):
        halves(TensorDataset(torch.arange(1), torch.arange(1)))


def test_to_rgb_keeps_three_channel_data_as_is_and_rejects_other_shapes():
    """to_rgb returns 3-channel images as they are (the same tensor) and rejects anything
    that is not (N, 1 or 3, H, W)."""
    x = torch.rand(2, 3, 5, 5)
    assert to_rgb(TensorDataset(x, torch.zeros(2))).tensors[0] is x
    for bad in (torch.rand(2, 4, 5, 5), torch.rand(2, 3, 5), torch.rand(2, 1, 1, 5, 5)):
        with pytest.raises(ValueError, match="shape"):
            to_rgb(TensorDataset(bad, torch.zeros(2)))


@pytest.mark.parametrize("target", ["mnist_m", "uci_digits"])
def test_pairs_are_source_then_target_and_build_in_the_given_root(tmp_path, monkeypatch, target):
    """Every pair unpacks as (MNIST source, named target), both as (N, 3, 28, 28) in [0, 1]
    with int64 labels 0..9, and everything it builds goes to the given root."""
    _forbid_network(monkeypatch)
    tiny = dataclasses.replace(SMOKE, train_size=40, test_size=20)
    other = tmp_path / "other"
    pair = load_domains(target, tiny, root=other)
    source, tgt = pair
    assert (source.name, tgt.name) == ("mnist", target)
    assert f"mnist -> {target}" in repr(pair)
    for ds in (source.train, source.test, tgt.train, tgt.test):
        x, y = ds.tensors
        assert x.shape[1:] == (3, 28, 28) and x.dtype == torch.float32
        assert 0 <= x.min() and x.max() <= 1 and y.dtype == torch.int64
        assert 0 <= y.min() and y.max() <= 9
    assert (len(source.train), len(source.test)) == (20, 20)  # first half of 40 train digits
    mnist = load_digits("mnist", tiny, other)
    assert mnist.source in source.source and "first half of train" in source.source
    if target == "mnist_m":
        assert "MNIST-M" in tgt.source
        assert len(list((other / "mnist_m").glob("*.pt"))) == 2
        assert not (tmp_path / "tl-course-data" / "mnist_m").exists()
        again = load_domains(target, tiny)  # no root: the data cache, same images
        assert len(list((tmp_path / "tl-course-data" / "mnist_m").glob("*.pt"))) == 2
        assert torch.equal(again.target.test.tensors[0], tgt.test.tensors[0])
    else:
        assert tgt.source == load_digits(target, tiny).source


def test_mnist_m_pair_follows_the_seed_and_reads_mnist_from_the_root(tmp_path, mnist_writer):
    """With full MNIST in the given root, load_domains(seed=s) splits it by halves(seed=s):
    source = first half, target train = MNIST-M of the second half at seed s, target test =
    MNIST-M of MNIST's test set at seed s + 1 (new crops)."""
    other = tmp_path / "other"
    mnist_writer(other, n_train=20, n_test=10)
    pair = load_domains("mnist_m", CPU, root=other, seed=3)
    mnist = load_digits("mnist", CPU, other)
    assert mnist.source.startswith("MNIST (torchvision, full)") and len(mnist.train) == 20
    first, second = halves(mnist.train, seed=3)
    ref = tmp_path / "ref"
    for got, want in ((pair.source.train, to_rgb(first)),
                      (pair.target.train, make_mnist_m(second, seed=3, root=ref)),
                      (pair.target.test, make_mnist_m(mnist.test, seed=4, root=ref))):
        assert all(torch.equal(a, b) for a, b in zip(got.tensors, want.tensors, strict=True))


def test_pair_source_carries_the_mnist_fallback_notice(tmp_path):
    """Offline without full MNIST, the cpu profile falls back to the sample with a notice,
    and the pair's source carries that notice."""
    cpu = dataclasses.replace(CPU, train_size=40, test_size=20)
    pair = load_domains("uci_digits", cpu, root=tmp_path / "empty")
    notice = load_digits("mnist", cpu, tmp_path / "empty").notice
    assert notice and "offline sample" in notice and pair.source.notice == notice


@pytest.mark.parametrize("box", [1, 19, 20, 27, 28])
def test_resize_pad_gives_28x28_for_odd_and_even_boxes(box):
    """Any box from 1 to 28 is framed in exactly 28x28: the digit sits at rows and columns
    (28 - box) // 2 onwards, and the margins are black."""
    x = torch.ones(2, 1, 16, 16)
    out = domains._resize_pad(x, box=box)
    top = (28 - box) // 2
    assert out.shape == (2, 1, 28, 28)
    inside = torch.zeros(28, 28, dtype=torch.bool)
    inside[top:top + box, top:top + box] = True
    assert torch.allclose(out[:, :, inside], torch.tensor(1.0), atol=1e-6)
    assert torch.all(out[:, :, ~inside] == 0.0)


def test_resize_pad_refuses_a_box_that_does_not_fit():
    with pytest.raises(ValueError, match="box must be between 1 and 28"):
        domains._resize_pad(torch.ones(1, 1, 16, 16), box=29)


@pytest.mark.parametrize("name, files", [("usps", ("usps.bz2", "usps.t.bz2")),
                                         ("svhn", ("train_32x32.mat", "test_32x32.mat"))])
def test_damaged_cache_files_get_one_error_naming_the_fix(tmp_path, monkeypatch, name, files):
    """Truncated files in the cache: a DataUnavailableError that names the folder and the
    fetch command, not the reader's own traceback."""
    _forbid_network(monkeypatch)
    (tmp_path / name).mkdir()
    for f in files:
        (tmp_path / name / f).write_bytes(b"not a dataset")
    load = {"usps": domains.load_usps, "svhn": domains.load_svhn}[name]
    where = re.escape(str(tmp_path / name))
    with pytest.raises(DataUnavailableError,
                       match=f"{name.upper()} files in {where} cannot .*fetch {name}"):
        load(SMOKE, root=tmp_path)


def test_load_photos_needs_photos_strictly_larger_than_a_crop(monkeypatch):
    """A photo is kept only when both sides are larger than 28 pixels: one exactly as tall or
    as wide as the 28x28 crop is skipped like a grey one, and 29x29 is enough."""
    import skimage.data

    rng = np.random.default_rng(0)
    sizes = {"t_tall": (28, 40), "t_wide": (40, 28), "t_edge": (28, 28), "t_ok": (29, 29)}
    imgs = {name: rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for name, hw in sizes.items()}
    for name, img in imgs.items():
        monkeypatch.setattr(skimage.data, name, lambda img=img: img, raising=False)
    with pytest.raises(DataUnavailableError, match="scikit-image"):
        load_photos(("t_tall", "t_wide", "t_edge"))
    [photo] = load_photos(("t_tall", "t_ok", "t_wide", "t_edge"))
    assert np.array_equal(photo, imgs["t_ok"])


@pytest.mark.parametrize("name", ["usps", "svhn"])
def test_usps_and_svhn_images_are_float32_whatever_torch_default_dtype(
        data_root, server, monkeypatch, name):
    """Like MNIST-M (uint8 / 255 as float), USPS and SVHN images come out float32 even when
    torch's default dtype is float64, with the same values as under the float32 default."""
    from torchvision.datasets import SVHN, USPS

    _forbid_network(monkeypatch)
    cls, make, files, reference, load = {
        "usps": (USPS, _usps_file, ("usps.bz2", "usps.t.bz2"), _usps_reference,
                 domains.load_usps),
        "svhn": (SVHN, _svhn_file, ("train_32x32.mat", "test_32x32.mat"), _svhn_reference,
                 domains.load_svhn),
    }[name]
    (data_root / name).mkdir()
    want = []
    for split, filename, n, seed in (("train", files[0], 4, 0), ("test", files[1], 3, 1)):
        blob, x, _ = make(n, seed)
        server.serve(cls, split, blob)
        (data_root / name / filename).write_bytes(blob)
        want.append(reference(x))
    tiny = dataclasses.replace(SMOKE, train_size=4, test_size=3)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = load(tiny, root=data_root)
    finally:
        torch.set_default_dtype(default)
    for ds, ref in ((got.train, want[0]), (got.test, want[1])):  # sizes cap nothing: in order
        x = ds.tensors[0]
        assert x.dtype == torch.float32
        np.testing.assert_allclose(x.numpy(), ref, atol=1e-4)
