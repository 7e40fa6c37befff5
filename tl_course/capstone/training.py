"""An image folder to a trained, evaluated and exported classifier (`tl-course train-folder`).

Two modes, as in notebooks 02 and 03: "probe" trains a linear head on the frozen
backbone's features (computed once), "finetune" runs the 03 recipe (head first, then
everything with discriminative learning rates).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ..data import make_loader
from ..device import get_device, seed_everything, versions
from ..distributed import Dist, DistributedError, gather_objects, shard
from ..features import Features, extract_features, linear_probe
from ..models import TransferModel, count_parameters, create_backbone
from ..profile import Profile, get_profile
from .export import DIGITS, SCRATCH, preprocessing, save_export, to_tensor
from .folder import (
    FolderError,
    FolderScan,
    load_rgb,
    scan_folder,
    stratified_split,
    write_json_atomic,
)

MODES = ("probe", "finetune")
MIN_STEPS = 150  # default training length in optimiser steps (cpu / gpu profiles)


@dataclass
class TrainResult:
    """What train_folder did: where the export is, and the validation metrics."""

    out: Path
    classes: list[str]
    metrics: dict[str, Any]
    val_true: torch.Tensor
    val_pred: torch.Tensor
    val_paths: list[Path] = field(default_factory=list)

    def report(self) -> str:
        m = self.metrics
        lines = [f"validation accuracy {m['val_accuracy']:.3f} (majority-class baseline "
                 f"{m['majority_baseline']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f})"]
        lines += [f"  {c:20s} {a:.3f}" for c, a in m["per_class_accuracy"].items()]
        lines.append("confusion matrix (rows: true class, columns: predicted, in that order):")
        lines += ["  " + " ".join(f"{n:4d}" for n in row) for row in m["confusion_matrix"]]
        lines.append(f"exported to {self.out / 'model.pt'} and {self.out / 'model.json'}")
        return "\n".join(lines)


MEMORY_LIMIT_GB = 4.0  # images are held in memory as float32; above this, say so first


def check_memory(n_images: int, prep: dict[str, Any], limit_gb: float = MEMORY_LIMIT_GB
                 ) -> None:
    """Refuse a folder whose preprocessed images would not fit in `limit_gb`."""
    size = n_images * prep["channels"] * prep["image_size"] ** 2 * 4 / 1e9
    if size > limit_gb:
        smaller = max(32, int(prep["image_size"] * (limit_gb / size) ** 0.5))
        raise FolderError(f"{n_images} images at {prep['image_size']} px need about "
                          f"{size:.1f} GB in memory (limit {limit_gb:g} GB): use "
                          f"--image-size {smaller} or fewer images")


@torch.no_grad()
def _predict_fp32(model: TransferModel, ds: TensorDataset, device: torch.device,
                  dist: Dist | None = None) -> tuple[list[int], torch.Tensor]:
    """(indices, logits) of this process's share of `ds`, in full precision, as
    load_export's predictions are computed. One process: every index. Under torchrun:
    distributed.shard's disjoint, unpadded share."""
    model.eval()
    idx = list(shard(len(ds), dist or Dist(device=device)))
    part = TensorDataset(*(t[idx] for t in ds.tensors))
    logits = [model(x.to(device)).float().cpu() for x, _ in make_loader(part, 256, device)]
    classes = model.head[1].out_features
    return idx, torch.cat(logits) if logits else torch.zeros(0, classes)


def gather_logits(idx: list[int], logits: torch.Tensor, n: int, dist: Dist | None = None
                  ) -> torch.Tensor:
    """Every process's (indices, logits) put back in order: the whole set's logits.

    Raises if the shards do not cover every example exactly once (a broken shard would
    silently skew every number computed from them)."""
    full = torch.zeros(n, logits.shape[1])
    seen = torch.zeros(n, dtype=torch.long)
    for their_idx, their_logits in gather_objects((idx, logits), dist or Dist()):
        full[their_idx] = their_logits
        seen[their_idx] += 1
    if not bool((seen == 1).all()):
        raise RuntimeError("validation shards do not cover every image exactly once")
    return full


def load_tensors(paths: list[Path], prep: dict[str, Any]) -> torch.Tensor:
    """Every image, preprocessed, stacked (the folders this is for fit in memory)."""
    return torch.stack([to_tensor(load_rgb(p), prep) for p in paths])


def backbone_model(backbone: str, num_classes: int, profile: Profile, device: torch.device,
                   seed: int) -> TransferModel:
    """The pretrained backbone with a fresh head: ImageNet weights (torchvision's weights
    API, cache first), the course's digits source model (notebook 02, load-or-train), or
    that network at random initialisation (SCRATCH, the no-pretraining baseline)."""
    if backbone == SCRATCH:
        from ..models import DigitCNN

        seed_everything(seed)
        return DigitCNN(num_classes=num_classes).to(device)
    if backbone == DIGITS:
        from ..data import load_digits
        from ..transfer import digit_split, source_model

        source, _ = digit_split(load_digits("mnist", profile))
        model = source_model(profile, device, source)  # seeds itself (0) when it trains
        seed_everything(seed)  # the new head follows the run's seed, cached source or not
        return model.reset_head(num_classes)
    model = create_backbone(backbone, num_classes, pretrained=True).to(device)
    seed_everything(seed)
    return model.reset_head(num_classes)


def _fit_probe(model: TransferModel, train: TensorDataset, device: torch.device, epochs: int,
               batch_size: int, seed: int, progress: bool, pretrained: bool = True) -> None:
    model.to(device).eval()  # the body stays as it is: only the head is trained
    feats = extract_features(model, make_loader(train, batch_size, device), device)
    head, _ = linear_probe(Features(feats.x, feats.y), None, model.head[1].out_features, device,
                           epochs=epochs, lr=1e-2, seed=seed, progress=progress)
    model.head[1].load_state_dict(head.state_dict())


def _fit_finetune(model: TransferModel, train: TensorDataset, device: torch.device,
                  epochs: int, batch_size: int, seed: int, progress: bool,
                  pretrained: bool = True, dist: Dist | None = None) -> None:
    """The 03 recipe for a pretrained backbone; plain training of everything at one
    learning rate for the untrained baseline (a head-first phase and smaller learning
    rates for early blocks only make sense for weights worth keeping)."""
    from ..train import fit
    from ..transfer import fine_tune

    loader = make_loader(train, batch_size, device, shuffle=True, seed=seed, dist=dist)
    if pretrained:
        fine_tune(model, loader, None, device, epochs=max(1, epochs - 1), head_epochs=1,
                  progress=progress, dist=dist)
    else:
        fit(model, loader, epochs=epochs, device=device, lr=2e-3, weight_decay=1e-4,
            progress=progress, desc="train", dist=dist)


def top_losses(logits: torch.Tensor, labels: torch.Tensor, n: int = 9) -> torch.Tensor:
    """Indices of the `n` validation images with the highest loss (most confidently wrong
    first), as fastai's `plot_top_losses`."""
    losses = F.cross_entropy(logits, labels, reduction="none")
    return losses.argsort(descending=True)[:n]


def save_top_losses(paths: list[Path], logits: torch.Tensor, labels: torch.Tensor,
                    classes: list[str], out: Path, n: int = 9) -> Path:
    """A grid of the top-loss images with true label, prediction and its probability."""
    from matplotlib.figure import Figure  # no pyplot: leaves the notebook's backend alone

    idx = top_losses(logits, labels, n).tolist()
    probs = F.softmax(logits, 1)
    cols = 3
    rows = max(1, (len(idx) + cols - 1) // cols)
    fig = Figure(figsize=(3 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, idx, strict=False):
        pred = int(logits[i].argmax())
        verdict = "wrong" if pred != int(labels[i]) else "right (fewer errors than images)"
        ax.imshow(load_rgb(paths[i]))
        ax.set_title(f"{verdict}\ntrue {classes[int(labels[i])]}, pred {classes[pred]} "
                     f"({float(probs[i, pred]):.2f})", fontsize=8)
    fig.tight_layout()
    path = out / "top_losses.png"
    tmp = out / ".top_losses.tmp.png"
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)
    return path


def metrics_from(logits: torch.Tensor, labels: torch.Tensor, train_labels: list[int],
                 classes: list[str], dist: Dist | None = None) -> dict[str, Any]:
    """Accuracy, the majority-class baseline, balanced and per-class accuracy, confusion.

    Under torchrun, `logits` and `labels` are this process's shard: the confusion counts
    are summed over processes (all-reduce), and every metric is read off the sum.
    """
    from ..plots import confusion_matrix

    cm = torch.as_tensor(confusion_matrix(labels, logits.argmax(1), len(classes)))
    if dist is not None and dist.active:
        cm = dist.all_reduce_sum(cm.to(dist.device)).cpu()
    cm = cm.numpy()
    per_class = {c: float(cm[i, i] / max(1, cm[i].sum())) for i, c in enumerate(classes)}
    majority = int(np.bincount(train_labels, minlength=len(classes)).argmax())
    total = int(cm.sum())
    return {"val_accuracy": float(np.trace(cm) / max(1, total)),
            "majority_baseline": float(cm[majority].sum() / max(1, total)),
            "majority_class": classes[majority],
            "balanced_accuracy": float(np.mean(list(per_class.values()))),
            "per_class_accuracy": per_class, "confusion_matrix": cm.tolist(),
            "val_images": total}


def train_folder(folder: str | os.PathLike, out: str | os.PathLike, *, backbone: str = DIGITS,
                 mode: str = "finetune", valid_pct: float = 0.2, seed: int = 0,
                 epochs: int | None = None, image_size: int | None = None,
                 profile: str | Profile | None = None, device: torch.device | None = None,
                 progress: bool | None = None, scan: FolderScan | None = None,
                 dist: Dist | None = None) -> TrainResult:
    """Train a classifier on an ImageFolder-layout folder and export it to `out`.

    `scan` reuses an earlier `scan_folder(folder)` (its summary is then not printed again).
    `dist` (distributed.init_from_env under torchrun): the same run on several processes,
    each on its shard of every batch (the global batch is the single-process one, so the
    learning rates are too); rank 0 alone prints and writes files.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    d = dist or Dist(device=device or get_device())
    if d.active and mode == "probe":
        raise DistributedError("--mode probe trains one linear layer on features computed once: "
                         "several processes gain nothing there; run it without torchrun, or "
                         "use --mode finetune")
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    device = d.device
    progress = prof.progress if progress is None else progress
    say = print if d.is_main else (lambda *a, **k: None)
    prep = preprocessing(backbone, image_size)  # validates the backbone name first
    if scan is None:
        scan = scan_folder(folder)
        say(scan.summary())
    out = Path(out).expanduser()
    train_idx, val_idx = stratified_split(scan.labels, valid_pct, seed)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        rel = [str(p.relative_to(scan.root)) for p in scan.paths]
        write_json_atomic({"seed": seed, "valid_pct": valid_pct, "classes": scan.classes,
                           "train": [rel[i] for i in train_idx],
                           "valid": [rel[i] for i in val_idx]}, out / "split.json")
    check_memory(len(scan.paths), prep)
    x = load_tensors(scan.paths, prep)
    y = torch.tensor(scan.labels)
    train = TensorDataset(x[train_idx], y[train_idx])
    val = TensorDataset(x[val_idx], y[val_idx])
    del x  # the two splits are copies
    # Small folders: a batch of at most a quarter of the images, and enough epochs for
    # about `min_steps` optimiser steps (a profile's epochs are sized for thousands).
    batch_size = min(prof.batch_size, max(8, len(train) // 4))
    per_process = math.ceil(batch_size / d.world_size)
    if d.active:
        batch_size = per_process * d.world_size
        say(f"torchrun: {d.world_size} processes ({d.backend} on {device.type}); global "
            f"batch {batch_size} = {d.world_size} x {per_process} per process; learning "
            "rates as for one process at that batch (nothing is scaled)")
    if epochs is None:
        min_steps = 10 if prof.name == "smoke" else MIN_STEPS
        epochs = max(prof.epochs, math.ceil(min_steps / math.ceil(len(train) / batch_size)))
    seed_everything(seed)
    # Rank 0 fills the caches (trained source model, downloaded weights) before the others
    # read them, so no two processes write one file.
    if d.active and not d.is_main:
        d.barrier()
    model = backbone_model(backbone, len(scan.classes), prof, device, seed)
    if d.active and d.is_main:
        d.barrier()
    start = time.perf_counter()
    pretrained = backbone != SCRATCH
    if mode == "probe":
        _fit_probe(model, train, device, epochs, batch_size, seed, progress, pretrained)
    else:
        _fit_finetune(model, train, device, epochs, per_process, seed, progress and d.is_main,
                      pretrained, d)
    seconds = time.perf_counter() - start
    model.eval()
    idx, logits = _predict_fp32(model, val, device, d)
    labels = val.tensors[1]
    metrics = metrics_from(logits, labels[idx], y[train_idx].tolist(), scan.classes, d)
    metrics["train_seconds"] = round(seconds, 1)
    logits = gather_logits(idx, logits, len(val), d)
    val_paths = [scan.paths[i] for i in val_idx]
    if d.is_main:
        save_top_losses(val_paths, logits, labels, scan.classes, out)
        meta = {"classes": scan.classes, "backbone": backbone, "mode": mode,
                "preprocess": prep, "metrics": metrics, "parameters": count_parameters(model),
                "versions": versions(), "split": {"seed": seed, "valid_pct": valid_pct,
                                                  "file": "split.json"},
                "epochs": epochs, "batch_size": batch_size,
                "processes": d.world_size,
                "skipped": [str(p) for p, _ in scan.skipped]}
        save_export(model.cpu(), out, meta)
        model.to(device)
    d.barrier()  # nobody returns (and tears down) before the export is written
    return TrainResult(out, scan.classes, metrics, labels, logits.argmax(1), val_paths)


@torch.no_grad()
def images_per_second(model: torch.nn.Module, images: torch.Tensor, device: torch.device,
                      batch_size: int = 64, repeats: int = 2) -> float:
    """Inference throughput of `model` on `images` (best of `repeats` passes, eval mode)."""
    from ..device import autocast

    model.eval()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        with autocast(device):
            for x in images.split(batch_size):
                model(x.to(device, non_blocking=True))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return len(images) / best
