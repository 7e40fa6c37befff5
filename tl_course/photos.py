"""Real photos for the ImageNet section of notebook 02 (section 7): EuroSAT, and a smoke stand-in.

EuroSAT (Helber et al. 2019): 27,000 Sentinel-2 satellite photos, 64x64 RGB, 10 land-use
classes, a 94 MB download through torchvision. Small enough for a classroom, real enough
to show what ImageNet features buy on a domain that is not ImageNet's.

Policy (DESIGN.md): smoke never downloads and runs on a clearly labelled stand-in (crops
of scikit-image's photos through a randomly initialised backbone); cpu / gpu use EuroSAT
and ImageNet weights when they are cached or downloadable, and otherwise skip the section
with one notice naming the fetch commands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from . import data as _data
from .data import DataUnavailableError, data_dir, fetch_command
from .models import (
    TransferModel,
    WeightsUnavailableError,
    create_backbone,
    weights_cached,
    weights_transforms,
)
from .profile import Profile

EUROSAT_HOST = "huggingface.co"
STANDIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


EUROSAT_IMAGES = 27_000


def eurosat_cached(root: Path) -> bool:
    """True when torchvision's EuroSAT folder is in `root`."""
    return (root / "eurosat" / "2750").is_dir()


def eurosat_intact(root: Path) -> bool:
    """True when all 27,000 EuroSAT images are there (the zip's MD5 was checked on download)."""
    folder = root / "eurosat" / "2750"
    return folder.is_dir() and sum(1 for _ in folder.glob("*/*.jpg")) == EUROSAT_IMAGES


def fetch_eurosat(root: Path) -> Path:
    """Download EuroSAT into `root` via torchvision (checksum-verified), atomically."""
    from torchvision.datasets import EuroSAT

    if eurosat_intact(root):
        return root / "eurosat"
    if eurosat_cached(root):
        print(f"EuroSAT in {root / 'eurosat'} is incomplete (interrupted copy?): "
              "downloading it again")
    if not _data.network_available(EUROSAT_HOST):
        raise DataUnavailableError(
            f"EuroSAT is not in {root / 'eurosat'} and there is no network to download it. "
            f"Run `{fetch_command('eurosat')}` on a machine with internet and copy the cache."
        )

    def download(tmp: Path) -> Path:
        EuroSAT(str(tmp), download=True)
        (tmp / "eurosat" / "EuroSAT.zip").unlink(missing_ok=True)  # 94 MB, extracted already
        return tmp / "eurosat"

    return _data.download_atomic(root / "eurosat", "eurosat", download)


def load_eurosat(root: Path, transform, per_class_train: int, per_class_test: int,
                 seed: int = 0) -> tuple[Dataset, Dataset, list[str]]:
    """A deterministic per-class train / test split of EuroSAT (it has no official one)."""
    from torchvision.datasets import EuroSAT

    full = EuroSAT(str(root), transform=transform)
    targets = torch.tensor(full.targets)
    gen = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in range(len(full.classes)):
        idx = torch.nonzero(targets == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        train_idx += idx[:per_class_train].tolist()
        test_idx += idx[per_class_train:per_class_train + per_class_test].tolist()
    return Subset(full, train_idx), Subset(full, test_idx), list(full.classes)


def standin_photos(
    per_class: int, size: int = 64, seed: int = 0
) -> tuple[TensorDataset, list[str]]:
    """Random crops of four scikit-image photos, one class per photo: code-path data only."""
    import skimage.data

    gen = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for label, name in enumerate(STANDIN_PHOTOS):
        img = torch.as_tensor(getattr(skimage.data, name)()).permute(2, 0, 1).float() / 255
        _, h, w = img.shape
        for _ in range(per_class):
            top = int(torch.randint(0, h - size + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - size + 1, (1,), generator=gen))
            xs.append(img[:, top:top + size, left:left + size])
            ys.append(label)
    return TensorDataset(torch.stack(xs), torch.tensor(ys)), list(STANDIN_PHOTOS)


@dataclass
class PhotoTask:
    """What the ImageNet section runs on: real data and weights, a stand-in, or nothing."""

    status: str  # "real", "standin" or "skipped"
    backbone: str
    model: TransferModel | None = None
    train: Dataset | None = None
    test: Dataset | None = None
    classes: list[str] = field(default_factory=list)
    notice: str = ""

    @property
    def available(self) -> bool:
        return self.status != "skipped"


def photo_task(profile: Profile, backbone: str = "resnet18", root: Path | None = None,
               per_class_train: int = 20, per_class_test: int = 50) -> PhotoTask:
    """Set up EuroSAT with an ImageNet backbone, or the stand-in (smoke), or a skip notice.

    Never raises for missing data or weights: an optional section must not stop a notebook.
    """
    root = data_dir() if root is None else root
    if not profile.allow_download:  # smoke: never the network, always the stand-in
        train, classes = standin_photos(per_class_train)
        test, _ = standin_photos(per_class_test // 5 or 2, seed=1)
        model = create_backbone(backbone, len(classes), pretrained=False)
        return PhotoTask("standin", backbone, model, train, test, classes,
                         "STAND-IN: random-weight backbone on crops of 4 scikit-image photos; "
                         "the numbers mean nothing, the code path is the real one.")
    missing = []
    if not weights_cached(backbone) and not _data.network_available("download.pytorch.org"):
        missing.append(f"ImageNet weights for {backbone} (`tl-course fetch {backbone}`)")
    if not eurosat_cached(root) and not _data.network_available(EUROSAT_HOST):
        missing.append(f"the EuroSAT photos (`{fetch_command('eurosat')}`)")
    if missing:
        return PhotoTask("skipped", backbone, notice=(
            "skipping the ImageNet section: no network, and not cached: " + "; ".join(missing)
            + ". Fetch them once with internet (or copy a cache) and re-run."))
    try:
        fetch_eurosat(root)
        train, test, classes = load_eurosat(root, weights_transforms(backbone),
                                            per_class_train, per_class_test)
        model = create_backbone(backbone, len(classes), pretrained=True)
    except (WeightsUnavailableError, DataUnavailableError, OSError) as exc:
        return PhotoTask("skipped", backbone, notice=f"skipping the ImageNet section: {exc}")
    return PhotoTask("real", backbone, model, train, test, classes,
                     f"EuroSAT with {backbone} ImageNet weights")
