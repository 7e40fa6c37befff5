"""Digit domains for domain adaptation (notebook 04): MNIST-M, UCI digits, USPS, SVHN.

Every domain comes out as 3-channel images (N, 3, 28, 28) in [0, 1] with int64 labels,
so one network reads them all. `load_domains(target, profile)` returns a DomainPair:
MNIST as the labelled source and the chosen target domain.

Source and target never share training digits: the MNIST training set is split in two
fixed halves; the first half is the source, the second half is what MNIST-M is built
from. (Test sets are only ever used for measuring, never for training.)

MNIST-M in the way Ganin et al. (2016) describe it: a digit blended over a random 28x28
crop of a colour photo as |photo - digit| per colour channel, so the digit shows up as
the photo's inverted colours. Binarising the digit first (blend_mnist_m's `threshold`)
follows the widely used re-implementation (tf-dann's create_mnistm.py), not the paper's
text. The paper cropped the BSDS500 photos; we crop the few colour photos that ship with
scikit-image (PHOTO_NAMES), so backgrounds repeat far more: this is an MNIST-M-like
target, not the paper's dataset, and its accuracies are not the paper's. The result is
deterministic for a seed and cached under data_dir()/mnist_m.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from . import data as _data  # module access, so a patched network_available is honoured
from .data import DATA_ENV, DataUnavailableError, DigitsData, fetch_command, load_digits
from .profile import Profile
from .train import save_atomic

# Colour photos bundled with scikit-image (no download). Ganin et al. used BSDS500.
PHOTO_NAMES: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket",
                                "immunohistochemistry")
TARGETS: tuple[str, ...] = ("mnist_m", "uci_digits", "usps", "svhn")
# Bump when the MNIST-M recipe changes, so stale cache files are not reused.
_MNIST_M_VERSION = 1


class UnknownDomainError(ValueError):
    """A target domain name the course does not know."""


@dataclass
class DomainPair:
    """A labelled source domain and a target domain, both as 3-channel DigitsData."""

    source: DigitsData
    target: DigitsData

    def __iter__(self) -> Iterator[DigitsData]:
        """Unpack as `source, target = pair`."""
        return iter((self.source, self.target))

    def __repr__(self) -> str:
        return (f"DomainPair({self.source.name} -> {self.target.name}: {self.source!r}, "
                f"{self.target!r})")


# --------------------------------------------------------------------------- helpers


def to_rgb(ds: TensorDataset) -> TensorDataset:
    """Grey (N, 1, H, W) images repeated to 3 channels; 3-channel data is returned as is."""
    x, y = ds.tensors[0], ds.tensors[1]
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
    return TensorDataset(x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x, y)


def halves(ds: TensorDataset, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Split `ds` into two disjoint halves at random (deterministic for `seed`)."""
    if len(ds) < 2:
        raise ValueError(f"need at least 2 examples to split in halves, got {len(ds)}")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    half = len(ds) // 2
    pick = lambda i: TensorDataset(*(t[i] for t in ds.tensors))
    return pick(idx[:half]), pick(idx[half:])


def _resize_pad(x: torch.Tensor, box: int = 20) -> torch.Tensor:
    """Resize digits that fill their frame to a `box` square centred in 28x28, like MNIST."""
    x = torch.nn.functional.interpolate(x, size=(box, box), mode="bilinear",
                                        align_corners=False)
    if not 1 <= box <= 28:
        raise ValueError(f"box must be between 1 and 28 pixels, got {box}")
    before = (28 - box) // 2  # an odd margin puts its extra pixel after (right, bottom)
    after = 28 - box - before
    return torch.nn.functional.pad(x, (before, after, before, after)).clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- MNIST-M


def load_photos(names: Sequence[str] = PHOTO_NAMES) -> list[np.ndarray]:
    """The colour photos (H, W, 3) uint8 from scikit-image that MNIST-M crops.

    Photos this scikit-image version lacks are skipped; none at all is an error.
    """
    import skimage.data

    photos = []
    for name in names:
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except Exception:  # missing in this version, or it would need a download
            continue
        if img.ndim == 3 and img.shape[2] >= 3 and min(img.shape[:2]) > 28:
            photos.append(np.ascontiguousarray(img[:, :, :3], dtype=np.uint8))
    if not photos:
        raise DataUnavailableError(
            f"none of the scikit-image photos {', '.join(names)} could be loaded, so MNIST-M "
            "cannot be built; reinstall scikit-image (`pip install scikit-image`)."
        )
    return photos


def blend_mnist_m(
    digits: torch.Tensor, photos: Sequence[np.ndarray], seed: int, threshold: float = 0.5
) -> torch.Tensor:
    """MNIST-M images from grey digits (N, 1, 28, 28) in [0, 1]: |photo crop - binary digit|.

    Each digit gets a random photo and a random 28x28 crop of it, chosen by a generator
    seeded with `seed`, so the same inputs and seed always give the same images.
    Returns (N, 3, 28, 28) uint8.
    """
    if digits.dim() != 4 or tuple(digits.shape[1:]) != (1, 28, 28):
        raise ValueError(f"expected digits of shape (N, 1, 28, 28), got {tuple(digits.shape)}")
    if not photos:
        raise ValueError("need at least one photo to crop backgrounds from")
    rng = np.random.default_rng(seed)
    n = digits.shape[0]
    # Binarised digit, white on black: 255 where the stroke is, 0 elsewhere.
    mask = (digits[:, 0].numpy() > threshold).astype(np.int16) * 255
    which = rng.integers(0, len(photos), size=n)
    out = np.empty((n, 28, 28, 3), dtype=np.uint8)
    for i in range(n):
        photo = photos[which[i]]
        top = rng.integers(0, photo.shape[0] - 28 + 1)
        left = rng.integers(0, photo.shape[1] - 28 + 1)
        patch = photo[top:top + 28, left:left + 28].astype(np.int16)
        out[i] = np.abs(patch - mask[i][:, :, None]).astype(np.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def mnist_m_cache_file(digits: torch.Tensor, seed: int, root: Path,
                       photo_names: Sequence[str] = PHOTO_NAMES) -> Path:
    """Where the MNIST-M version of `digits` for `seed` is cached (named by a content hash)."""
    h = hashlib.sha1()
    h.update((digits.clamp(0, 1) * 255).round().to(torch.uint8).numpy().tobytes())
    h.update(f"{seed}|{','.join(photo_names)}|v{_MNIST_M_VERSION}".encode())
    return root / "mnist_m" / f"mnist_m-{h.hexdigest()[:16]}.pt"


def make_mnist_m(ds: TensorDataset, seed: int = 0, root: Path | None = None,
                 photo_names: Sequence[str] = PHOTO_NAMES) -> TensorDataset:
    """MNIST-M built from the grey digits of `ds` (labels kept), cached in root/mnist_m.

    The cache file is named by a hash of the digits, the seed and the photo list, so a
    different subset or seed never picks up a stale file. Returns float images in [0, 1].
    """
    root = _data.data_dir() if root is None else Path(root)
    digits, labels = ds.tensors[0], ds.tensors[1]
    path = mnist_m_cache_file(digits, seed, root, photo_names)
    cached = None
    if path.exists():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged file: rebuild it
            cached = None
    if cached is None or cached["images"].shape[0] != len(labels):
        images = blend_mnist_m(digits, load_photos(photo_names), seed)
        save_atomic({"images": images, "labels": labels.clone()}, path)
    else:
        images = cached["images"]
    return TensorDataset(images.float() / 255.0, labels.long())


# --------------------------------------------------------------------------- USPS, SVHN


def usps_cached(root: Path) -> bool:
    """True when torchvision's USPS files are in root/usps."""
    return all((root / "usps" / f).exists() for f in ("usps.bz2", "usps.t.bz2"))


def svhn_cached(root: Path) -> bool:
    """True when torchvision's SVHN train and test files are in root/svhn."""
    return all((root / "svhn" / f).exists() for f in ("train_32x32.mat", "test_32x32.mat"))


def _fetch(name: str, root: Path, cached: Callable[[Path], bool],
           download: Callable[[str], None], host: str) -> Path:
    """Download `name` through torchvision into a temp folder, then rename it into place."""
    target = root / name
    if cached(root):
        return target
    if not _data.network_available(host):
        raise DataUnavailableError(
            f"{name.upper()} is not in {target} and there is no network to download it. "
            f"Run `{fetch_command(name)}` on a machine with internet and copy its cache folder "
            f"here (or point {DATA_ENV} at a copy)."
        )

    def into(tmp: Path) -> Path:
        download(str(tmp))
        return tmp

    return _data.download_atomic(target, name, into)


def fetch_usps(root: Path) -> Path:
    """Download USPS (7,291 train / 2,007 test, 16x16) into root/usps through torchvision."""
    from torchvision.datasets import USPS

    def download(folder: str) -> None:
        USPS(folder, train=True, download=True)
        USPS(folder, train=False, download=True)

    return _fetch("usps", Path(root), usps_cached, download, "www.csie.ntu.edu.tw")


def fetch_svhn(root: Path) -> Path:
    """Download SVHN (73,257 train / 26,032 test, 32x32 colour) into root/svhn."""
    from torchvision.datasets import SVHN

    def download(folder: str) -> None:
        SVHN(folder, split="train", download=True)
        SVHN(folder, split="test", download=True)

    return _fetch("svhn", Path(root), svhn_cached, download, "ufldl.stanford.edu")


def _need(name: str, root: Path, profile: Profile, cached: Callable[[Path], bool],
          fetch: Callable[[Path], Path]) -> None:
    """Make sure `name` is cached: download it where the profile allows, else explain."""
    if cached(root):
        return
    if profile.allow_download:
        try:
            fetch(root)
            return
        except DataUnavailableError:
            pass
    raise DataUnavailableError(
        f"{name.upper()} is not in {root / name} and the {profile.name} profile cannot download "
        f"it. Fix: run `{fetch_command(name)}` with internet (or point {DATA_ENV} at a copied "
        "cache), or use the offline targets mnist_m / uci_digits."
    )


def _read(name: str, folder: Path, read: Callable[[], Any]) -> Any:
    """torchvision's reader of a cached dataset; damaged files get one clear error."""
    try:
        return read()
    except Exception as exc:  # bz2 / .mat readers raise many kinds on a truncated file
        raise DataUnavailableError(
            f"The {name.upper()} files in {folder} cannot be read ({type(exc).__name__}: "
            f"{exc}). Delete that folder and run `{fetch_command(name)}` again."
        ) from exc


def load_usps(profile: Profile, root: Path | None = None) -> DigitsData:
    """USPS as 3-channel 28x28 digits (16x16 resized to a 20x20 box, like MNIST's framing)."""
    from torchvision.datasets import USPS

    root = _data.data_dir() if root is None else Path(root)
    _need("usps", root, profile, usps_cached, fetch_usps)
    parts = []
    for train in (True, False):
        ds = _read("usps", root / "usps",
                   lambda train=train: USPS(str(root / "usps"), train=train, download=False))
        x = torch.as_tensor(np.asarray(ds.data), dtype=torch.float32).unsqueeze(1) / 255.0
        parts.append(to_rgb(TensorDataset(_resize_pad(x), torch.as_tensor(ds.targets).long())))
    return DigitsData("usps", _data.subset(parts[0], profile.train_size, seed=1),
                      _data.subset(parts[1], profile.test_size, seed=2), "USPS (torchvision)")


def load_svhn(profile: Profile, root: Path | None = None) -> DigitsData:
    """SVHN house numbers, 32x32 colour resized to 28x28."""
    from torchvision.datasets import SVHN

    root = _data.data_dir() if root is None else Path(root)
    _need("svhn", root, profile, svhn_cached, fetch_svhn)
    parts = []
    for split in ("train", "test"):
        ds = _read("svhn", root / "svhn",
                   lambda split=split: SVHN(str(root / "svhn"), split=split, download=False))
        x = torch.as_tensor(ds.data, dtype=torch.float32) / 255.0
        x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear",
                                            align_corners=False, antialias=True)
        parts.append(TensorDataset(x.clamp_(0, 1), torch.as_tensor(ds.labels).long()))
    return DigitsData("svhn", _data.subset(parts[0], profile.train_size, seed=1),
                      _data.subset(parts[1], profile.test_size, seed=2), "SVHN (torchvision)")


# --------------------------------------------------------------------------- pairs


def load_domains(target: str, profile: Profile, root: Path | None = None,
                 seed: int = 0) -> DomainPair:
    """MNIST (source) and `target` (one of TARGETS) sized for `profile`, as 3-channel data.

    The MNIST training set is split into two disjoint halves (fixed by `seed`): the first
    is the source's training set; for mnist_m the second half becomes the target's
    training images, so no digit is seen in both domains during training. The target's
    test set is built from MNIST's test set (mnist_m) or is the target's own test split.
    """
    if target not in TARGETS:
        raise UnknownDomainError(
            f"unknown target domain {target!r}; choose one of: {', '.join(TARGETS)}"
        )
    root = _data.data_dir() if root is None else Path(root)
    # Downloadable targets first: a missing one fails before any other work is done.
    target_data = {"usps": load_usps, "svhn": load_svhn}.get(target, lambda p, r: None)(
        profile, root)
    mnist = load_digits("mnist", profile, root)
    source_train, other_half = halves(mnist.train, seed)
    source = DigitsData("mnist", to_rgb(source_train), to_rgb(mnist.test),
                        f"{mnist.source}, first half of train", mnist.notice)
    if target == "mnist_m":
        target_data = DigitsData(
            "mnist_m",
            make_mnist_m(other_half, seed=seed, root=root),
            # Another seed for the test set, so its backgrounds are new crops.
            make_mnist_m(mnist.test, seed=seed + 1, root=root),
            f"MNIST-M built from {mnist.source} (second half of train) on scikit-image photos",
        )
    elif target == "uci_digits":
        uci = load_digits("uci_digits", profile, root)
        target_data = DigitsData("uci_digits", to_rgb(uci.train), to_rgb(uci.test), uci.source)
    assert target_data is not None  # every name in TARGETS is handled above
    return DomainPair(source, target_data)
