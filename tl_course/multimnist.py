"""MultiMNIST (notebook 05): two overlapping digits per image, built from MNIST.

The canvas follows the MultiMNIST code Sener & Koltun (2018) released (after Sabour et
al., 2017): a 36x36 canvas, one digit at the top-left, a second digit shifted 6 pixels
right and down, the two overlaid by taking the pixel-wise maximum, and the canvas resized
back to 28x28. Two differences: we resize with antialiased bilinear interpolation
(compose_pairs) where their code used nearest-neighbour, and only `left` / `right` are
their tasks; `sum`, `parity` and `noise` are the course's. Every image carries these labels:

- ``left`` / ``right``: the two digits (10 classes each), the two main tasks;
- ``sum``: left + right (19 classes), a task related to both;
- ``parity``: whether the left digit is odd (2 classes), a coarse version of ``left``;
- ``noise``: a random label fixed per image (10 classes), a task that shares nothing
  with the others, used to show negative transfer.

Pairs are drawn within a split (train pairs from MNIST train images only, test pairs from
test images only), deterministically for a seed, and cached as a .pt file.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from .data import DigitsData, data_dir, load_digits
from .profile import Profile
from .train import save_atomic

CANVAS = 36
SHIFT = 6
SIZE = 28
# Label used for "no label for this task on this image" (cross-entropy's ignore_index).
IGNORE = -100
TASKS: dict[str, int] = {"left": 10, "right": 10, "sum": 19, "parity": 2, "noise": 10}
# Bump when the construction changes so that old cache files are not reused.
FORMAT_VERSION = 1


class MultiTaskDataset(Dataset):
    """Images (N, 1, 28, 28) in [0, 1] with one int64 label vector per task.

    Items are ``(image, {task: label})``, so the default DataLoader collates batches into
    ``(images, {task: labels})``. A label of IGNORE means "unlabelled for that task".
    """

    def __init__(self, images: torch.Tensor, labels: Mapping[str, torch.Tensor]):
        if images.dim() != 4 or images.shape[1:] != (1, SIZE, SIZE):
            raise ValueError(f"images must have shape (N, 1, 28, 28), got {tuple(images.shape)}")
        if not labels:
            raise ValueError("a multi-task dataset needs at least one task's labels")
        for task, y in labels.items():
            if y.shape != (images.shape[0],):
                raise ValueError(f"labels of task {task!r} have shape {tuple(y.shape)}, "
                                 f"expected ({images.shape[0]},)")
        self.images = images
        self.labels = {t: y.long() for t, y in labels.items()}

    @property
    def tasks(self) -> list[str]:
        return list(self.labels)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.images[i], {t: y[i] for t, y in self.labels.items()}

    def __repr__(self) -> str:
        return f"MultiTaskDataset({len(self)} images, tasks={self.tasks})"

    def select(self, idx: torch.Tensor) -> MultiTaskDataset:
        """The examples at `idx` (a LongTensor of positions)."""
        return MultiTaskDataset(self.images[idx], {t: y[idx] for t, y in self.labels.items()})

    def subset(self, n: int | None, seed: int = 0) -> MultiTaskDataset:
        """A deterministic random subset of `n` examples (all of them when n is None or larger)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise ValueError(f"subset size must be positive, got {n}")
        gen = torch.Generator().manual_seed(seed)
        return self.select(torch.randperm(len(self), generator=gen)[:n])

    def split(self, val_fraction: float, seed: int = 0) -> tuple[MultiTaskDataset, ...]:
        """(train, validation) parts, deterministic for `seed`; `val_fraction` in (0, 1)."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        n_val = max(1, round(len(self) * val_fraction))
        return self.select(idx[n_val:]), self.select(idx[:n_val])

    def with_tasks(self, tasks: Iterable[str]) -> MultiTaskDataset:
        """The same images with only the labels of `tasks`."""
        tasks = list(tasks)
        unknown = [t for t in tasks if t not in self.labels]
        if unknown:
            raise KeyError(f"unknown task {', '.join(map(repr, unknown))}; this dataset has: "
                           f"{', '.join(self.tasks)}")
        return MultiTaskDataset(self.images, {t: self.labels[t] for t in tasks})

    def keep_labels(self, task: str, n: int, seed: int = 0) -> MultiTaskDataset:
        """Keep `task`'s labels on only `n` random images; the rest become IGNORE.

        Models "labels for this task are expensive": the images and the other tasks'
        labels stay, so an auxiliary task can still teach the shared trunk from them.
        """
        if task not in self.labels:
            raise KeyError(f"unknown task {task!r}; this dataset has: {', '.join(self.tasks)}")
        if not 0 < n <= len(self):
            raise ValueError(f"n must be between 1 and {len(self)}, got {n}")
        gen = torch.Generator().manual_seed(seed)
        hidden = torch.randperm(len(self), generator=gen)[n:]
        labels = dict(self.labels)
        labels[task] = labels[task].clone()
        labels[task][hidden] = IGNORE
        return MultiTaskDataset(self.images, labels)

    def labelled(self, task: str) -> MultiTaskDataset:
        """Only the examples that have a label for `task`."""
        if task not in self.labels:
            raise KeyError(f"unknown task {task!r}; this dataset has: {', '.join(self.tasks)}")
        return self.select(torch.nonzero(self.labels[task] != IGNORE).flatten())

    def single(self, task: str) -> TensorDataset:
        """A plain (image, label) TensorDataset for one task, e.g. for `tlc.fit`'s default step."""
        return TensorDataset(self.images, self.with_tasks([task]).labels[task])


@dataclass
class MultiMNIST:
    """Train and test MultiMNIST sets, the number of classes per task, and their origin."""

    train: MultiTaskDataset
    test: MultiTaskDataset
    num_classes: dict[str, int]
    source: str
    path: Path | None = None  # the cache file, when cached

    def __repr__(self) -> str:
        return (f"MultiMNIST({len(self.train)} train / {len(self.test)} test pairs, "
                f"tasks={list(self.num_classes)}, from {self.source!r})")


# --------------------------------------------------------------------------- building


def overlay_canvas(left: torch.Tensor, right: torch.Tensor, shift: int = SHIFT,
                   canvas: int = CANVAS) -> torch.Tensor:
    """Place `left` at the top-left of a canvas and `right` shifted by `shift` px right and
    down; overlay by the pixel-wise maximum. Images (N, 1, 28, 28) -> (N, 1, canvas, canvas)."""
    if left.shape != right.shape or left.dim() != 4:
        raise ValueError(f"left and right must both be (N, 1, H, W), got {tuple(left.shape)} "
                         f"and {tuple(right.shape)}")
    h, w = left.shape[-2:]
    if h + shift > canvas or w + shift > canvas:
        raise ValueError(f"a {h}x{w} digit shifted by {shift} does not fit a {canvas} canvas")
    out = left.new_zeros(*left.shape[:2], canvas, canvas)
    out[..., :h, :w] = left
    out[..., shift:shift + h, shift:shift + w] = torch.maximum(
        out[..., shift:shift + h, shift:shift + w], right)
    return out


def compose_pairs(left: torch.Tensor, right: torch.Tensor, shift: int = SHIFT,
                  canvas: int = CANVAS, size: int = SIZE) -> torch.Tensor:
    """MultiMNIST images: the overlaid canvas resized (bilinear, antialiased) to size x size."""
    big = overlay_canvas(left, right, shift, canvas)
    small = F.interpolate(big, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
    return small.clamp_(0.0, 1.0)


def pair_labels(left: torch.Tensor, right: torch.Tensor, gen: torch.Generator
                ) -> dict[str, torch.Tensor]:
    """All tasks' labels for pairs of digits `left`, `right` (int64 vectors)."""
    return {
        "left": left.long(),
        "right": right.long(),
        "sum": (left + right).long(),
        "parity": (left % 2).long(),
        # Drawn after the pairing, from the same generator: fixed for the seed.
        "noise": torch.randint(0, TASKS["noise"], left.shape, generator=gen),
    }


def make_pairs(images: torch.Tensor, labels: torch.Tensor, pairs_per_image: int = 1,
               seed: int = 0, chunk: int = 4096) -> MultiTaskDataset:
    """Pair every image of one split with `pairs_per_image` random partners of the same split.

    Image i is the left digit of `pairs_per_image` pairs; each partner is drawn uniformly
    from the other images (never i itself), so every digit is also a right digit about
    `pairs_per_image` times. Deterministic for `seed`.
    """
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 images to make pairs, got {n}")
    if pairs_per_image < 1:
        raise ValueError(f"pairs_per_image must be >= 1, got {pairs_per_image}")
    gen = torch.Generator().manual_seed(seed)
    left_idx = torch.arange(n).repeat(pairs_per_image)
    # An offset in 1..n-1 picks any image but the same one.
    right_idx = (left_idx + torch.randint(1, n, left_idx.shape, generator=gen)) % n
    # Building in chunks keeps the 36x36 canvases of a large set from filling the memory.
    parts = [compose_pairs(images[left_idx[i:i + chunk]], images[right_idx[i:i + chunk]])
             for i in range(0, len(left_idx), chunk)]
    # Stored as 8-bit like MNIST itself: a quarter of the memory and cache size.
    quantised = (torch.cat(parts) * 255).round_().to(torch.uint8).float() / 255
    return MultiTaskDataset(quantised, pair_labels(labels[left_idx], labels[right_idx], gen))


def pairs_per_image(target: int | None, available: int) -> int:
    """How many pairings per image give at least `target` pairs (1 when target is None)."""
    if target is None:
        return 1
    return max(1, math.ceil(target / max(1, available)))


def _digest(digits: DigitsData, params: tuple) -> str:
    h = hashlib.sha1(repr((FORMAT_VERSION, params)).encode())
    for ds in (digits.train, digits.test):
        for t in ds.tensors:
            h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _pack(ds: MultiTaskDataset) -> dict[str, torch.Tensor]:
    out = {"images": (ds.images * 255).round().to(torch.uint8)}
    out.update({f"label_{t}": y for t, y in ds.labels.items()})
    return out


def _unpack(d: Mapping[str, torch.Tensor]) -> MultiTaskDataset:
    labels = {k.removeprefix("label_"): v for k, v in d.items() if k.startswith("label_")}
    return MultiTaskDataset(d["images"].float() / 255, labels)


def build_multimnist(digits: DigitsData, seed: int = 0, train_pairs: int | None = None,
                     test_pairs: int | None = None, root: Path | None = None,
                     cache: bool = True) -> MultiMNIST:
    """MultiMNIST from the digits of `digits` (train pairs from its train images, test pairs
    from its test images), with at least `train_pairs` / `test_pairs` pairs (None: one pair
    per image). Cached under `root`/multimnist (default: the course data folder) by a key
    made from the input digits and the settings, so a change of either rebuilds it.
    """
    k_train = pairs_per_image(train_pairs, len(digits.train))
    k_test = pairs_per_image(test_pairs, len(digits.test))
    key = _digest(digits, (seed, k_train, k_test, CANVAS, SHIFT, SIZE))
    path = (data_dir() if root is None else root) / "multimnist" / f"multimnist-{key}.pt"
    source = f"MultiMNIST built from {digits.source}"
    if cache and path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        return MultiMNIST(_unpack(state["train"]), _unpack(state["test"]), dict(TASKS),
                          source, path)
    train = make_pairs(*digits.train.tensors, pairs_per_image=k_train, seed=seed)
    # A different stream for the test pairs, so they are not the train pairing replayed.
    test = make_pairs(*digits.test.tensors, pairs_per_image=k_test, seed=seed + 1_000_003)
    if cache:
        save_atomic({"train": _pack(train), "test": _pack(test)}, path)
    return MultiMNIST(train, test, dict(TASKS), source, path if cache else None)


def load_multimnist(profile: Profile, seed: int = 0, root: Path | None = None) -> MultiMNIST:
    """MultiMNIST sized for `profile`, built from the MNIST the profile gives.

    About `profile.train_size` train pairs and `profile.test_size` test pairs: when the
    profile asks for more pairs than there are MNIST images (the offline sample), each
    image is paired with several random partners.
    """
    digits = load_digits("mnist", profile, root)
    return build_multimnist(digits, seed, profile.train_size, profile.test_size, root)
