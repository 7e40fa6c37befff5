"""An exported classifier: `model.pt` (state_dict only) + `model.json` (what it needs).

The JSON records the classes, the backbone, the preprocessing, the metrics, the versions
and the split seed, so `load_export` can rebuild the same network on any device (a
GPU-trained export loads on a CPU-only laptop) and `predict_images` applies the same
preprocessing as training.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models import BACKBONES, DigitCNN, TransferModel, create_backbone
from .folder import IMAGE_SUFFIXES, load_rgb

FORMAT = "tl-course-export/1"
DIGITS = "digits"  # the course's own source model (notebook 02), greyscale 28x28
SCRATCH = "digits-scratch"  # the same network at random initialisation: the baseline
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class ExportError(ValueError):
    """An export folder that cannot be loaded; the message says why and what to do."""


def backbone_names() -> list[str]:
    return [DIGITS, SCRATCH, *BACKBONES]


def preprocessing(backbone: str, image_size: int | None = None) -> dict[str, Any]:
    """How images are turned into the backbone's input (stored in model.json)."""
    if backbone in (DIGITS, SCRATCH):
        return {"channels": 1, "image_size": image_size or 28, "mean": [0.0], "std": [1.0]}
    if backbone not in BACKBONES:
        raise ExportError(f"unknown backbone {backbone!r}; choose one of: "
                          f"{', '.join(backbone_names())}")
    return {"channels": 3, "image_size": image_size or 224, "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD}


def to_tensor(img: Any, prep: dict[str, Any]) -> torch.Tensor:
    """A PIL RGB image -> the normalised (C, S, S) tensor the model takes."""
    import numpy as np
    from PIL import Image

    size = int(prep["image_size"])
    img = img.convert("L") if prep["channels"] == 1 else img.convert("RGB")
    img = img.resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
    mean = torch.tensor(prep["mean"]).view(-1, 1, 1)
    std = torch.tensor(prep["std"]).view(-1, 1, 1)
    return (x - mean) / std


def build_model(backbone: str, num_classes: int) -> TransferModel:
    """The architecture of an export (no pretrained weights: the state_dict has them)."""
    if backbone in (DIGITS, SCRATCH):
        return DigitCNN(num_classes=num_classes)
    if backbone not in BACKBONES:
        raise ExportError(f"unknown backbone {backbone!r}; choose one of: "
                          f"{', '.join(backbone_names())}")
    return create_backbone(backbone, num_classes, pretrained=False)


def save_export(model: nn.Module, out: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write model.pt (state_dict, atomically) and model.json into `out`."""
    from ..train import save_checkpoint
    from .folder import write_json_atomic

    out = Path(out)
    save_checkpoint(model, out / "model.pt")
    write_json_atomic({"format": FORMAT, **meta}, out / "model.json")
    return out


@dataclass
class Exported:
    """A loaded export: the model (eval mode, on `device`) and its metadata."""

    model: TransferModel
    meta: dict[str, Any]
    device: torch.device

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def tensor(self, path: str | os.PathLike) -> torch.Tensor:
        return to_tensor(load_rgb(path), self.meta["preprocess"])


def load_export(folder: str | os.PathLike, device: torch.device | None = None) -> Exported:
    """Rebuild the exported model on `device` (default CPU) from `folder`."""
    folder = Path(folder).expanduser()
    device = device or torch.device("cpu")
    pt, js = folder / "model.pt", folder / "model.json"
    missing = [p.name for p in (pt, js) if not p.is_file()]
    if missing:
        raise ExportError(f"{folder} lacks {' and '.join(missing)}: point --model at the "
                          "folder `tl-course train-folder ... --out` wrote")
    try:
        meta = json.loads(js.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{js} is not valid JSON ({exc}); re-export the model") from None
    needed = ("classes", "backbone", "preprocess")
    if (not isinstance(meta, dict) or meta.get("format") != FORMAT
            or any(k not in meta for k in needed)):
        raise ExportError(f"{js} is not a tl-course export (needs format {FORMAT!r} and "
                          f"{', '.join(needed)}); re-export the model")
    model = build_model(meta["backbone"], len(meta["classes"]))
    _check_preprocess(meta["preprocess"], meta["backbone"], js)
    try:
        state = torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, not a checkpoint, pickled code
        raise ExportError(f"{pt} cannot be read ({type(exc).__name__}); re-export the "
                          "model") from None
    if not isinstance(state, dict):
        raise ExportError(f"{pt} holds a {type(state).__name__}, not a state_dict; re-export "
                          "the model")
    try:
        model.load_state_dict(state)
    except RuntimeError:
        head = state.get("head.1.weight")
        outputs = f"{head.shape[0]} classes" if head is not None else "another architecture"
        raise ExportError(f"model.json says backbone {meta['backbone']!r} with "
                          f"{len(meta['classes'])} classes, but model.pt holds {outputs}: "
                          "the two files do not belong together; re-export the model") from None
    return Exported(model.to(device).eval(), meta, device)


def _check_preprocess(prep: Any, backbone: str, js: Path) -> None:
    """The preprocessing in model.json must fit the backbone: an edited value would give
    a crash at the first image or, worse, silently wrong predictions."""
    want = preprocessing(backbone)
    ok = (isinstance(prep, dict) and prep.get("channels") == want["channels"]
          and isinstance(prep.get("image_size"), int) and prep["image_size"] >= 8
          and all(isinstance(prep.get(k), list) and len(prep[k]) == want["channels"]
                  for k in ("mean", "std")))
    if not ok:
        raise ExportError(f"{js}: 'preprocess' does not fit backbone {backbone!r} (expected "
                          f"{want['channels']} channel(s), an image_size of 8 or more, and "
                          "one mean and std per channel); was the file edited? Re-export "
                          "the model")


def image_paths(items: list[str | os.PathLike]) -> list[Path]:
    """Files as given, and the images inside folders (sorted, hidden files skipped)."""
    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES
                          and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist: give image files or folders")
    return out


@torch.no_grad()
def predict_images(exported: Exported, paths: list[Path], top_k: int = 3,
                   batch_size: int = 64) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image; unreadable images get an error."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    k = min(top_k, len(exported.classes))
    rows: list[dict[str, Any]] = []
    batch: list[tuple[Path, torch.Tensor]] = []

    def flush() -> None:
        if not batch:
            return
        x = torch.stack([t for _, t in batch]).to(exported.device)
        probs = F.softmax(exported.model(x).float(), 1).cpu()
        top = probs.topk(k, dim=1)
        for (path, _), p, i in zip(batch, top.values, top.indices, strict=True):
            rows.append({"path": str(path), "top": [(exported.classes[int(j)], float(q))
                                                    for q, j in zip(p, i, strict=True)]})
        batch.clear()

    for path in paths:
        try:
            batch.append((path, exported.tensor(path)))
        except Exception as exc:  # report the file, keep going
            flush()
            rows.append({"path": str(path), "error": f"{type(exc).__name__}: {exc}"[:160]})
        if len(batch) == batch_size:
            flush()
    flush()
    return rows
