"""Models: small digit networks, torchvision backbones, heads, freezing, parameter groups.

Every model the course fine-tunes has the same shape (timm-style): `body` maps images
to an embedding of size `feature_dim`, `head` maps the embedding to logits, and
`blocks` names the body's stages in input-to-output order, so "freeze up to layer3"
or "a lower learning rate for earlier blocks" means the same thing for every model.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class UnknownModelError(ValueError):
    """A model or block name the course does not know."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are not cached and cannot be downloaded."""


# --------------------------------------------------------------------------- digit models


class MLP(nn.Module):
    """Flatten, then fully connected layers with ReLU (and optional dropout)."""

    def __init__(self, hidden: tuple[int, ...] = (256, 128), num_classes: int = 10,
                 dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = 28 * 28
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 convolutions with BatchNorm and ReLU, then 2x2 max pooling (halves H and W)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.MaxPool2d(2),
    )


class TransferModel(nn.Module):
    """`body` (named blocks, then pooling) -> embedding -> `head` (dropout, linear).

    - `features(x)`: the embedding, shape (N, feature_dim);
    - `blocks`: the body's stages by name, input to output;
    - `reset_head(num_classes)`: a fresh linear head for a new task.
    """

    def __init__(self, blocks: Sequence[tuple[str, nn.Module]], pool: nn.Module,
                 feature_dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleDict(OrderedDict(blocks))
        self.pool = pool
        self.feature_dim = feature_dim
        self.dropout = dropout
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))
        # Blocks whose BatchNorm layers stay in eval mode (fixed running statistics)
        # even while the model trains: see set_trainable(bn="frozen").
        self.frozen_bn: set[str] = set()

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        for name in self.frozen_bn:
            for m in self.blocks[name].modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    @property
    def block_names(self) -> list[str]:
        return list(self.blocks.keys())

    def body(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks.values():
            x = block(x)
        return self.pool(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def reset_head(self, num_classes: int) -> TransferModel:
        """Replace the head with a freshly initialised one for `num_classes` classes."""
        device = next(self.parameters()).device
        self.head = nn.Sequential(nn.Dropout(self.dropout),
                                  nn.Linear(self.feature_dim, num_classes)).to(device)
        return self


class DigitCNN(TransferModel):
    """A small CNN for 28x28 digits: two conv blocks (28 -> 14 -> 7), pooling to 2x2, a head.

    Pooling to 2x2 rather than 1x1 keeps a little "where" information, which is worth
    about one point of MNIST accuracy for no extra convolution cost.
    """

    def __init__(self, num_classes: int = 10, width: int = 32, dropout: float = 0.0,
                 in_channels: int = 1):
        pool = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())
        blocks = [("block1", conv_block(in_channels, width)),
                  ("block2", conv_block(width, 2 * width))]
        super().__init__(blocks, pool, 2 * width * 4, num_classes, dropout)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with requires_grad when trainable_only)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------- torchvision


@dataclass(frozen=True)
class BackboneSpec:
    """How to build a torchvision model and cut it into named blocks."""

    builder: str  # torchvision.models function name
    weights: str  # torchvision weights enum entry, e.g. "ResNet18_Weights.IMAGENET1K_V1"
    split: Callable[[nn.Module], tuple[list[tuple[str, nn.Module]], int]]


def _split_resnet(m: nn.Module) -> tuple[list[tuple[str, nn.Module]], int]:
    stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
    blocks = [("stem", stem)] + [(f"layer{i}", getattr(m, f"layer{i}")) for i in range(1, 5)]
    return blocks, m.fc.in_features


def _split_mobilenet_v3(m: nn.Module) -> tuple[list[tuple[str, nn.Module]], int]:
    feats = m.features
    # Stem, four stages grouped by output resolution, and the final 1x1 conv.
    groups = {"stem": [0], "stage1": [1], "stage2": [2, 3], "stage3": [4, 5, 6, 7, 8],
              "stage4": [9, 10, 11], "head_conv": [12]}
    blocks = [(n, nn.Sequential(*[feats[i] for i in idx])) for n, idx in groups.items()]
    return blocks, feats[12].out_channels


def _split_efficientnet(m: nn.Module) -> tuple[list[tuple[str, nn.Module]], int]:
    feats = m.features
    groups = {"stem": [0], "stage1": [1], "stage2": [2], "stage3": [3], "stage4": [4, 5],
              "stage5": [6, 7], "head_conv": [8]}
    blocks = [(n, nn.Sequential(*[feats[i] for i in idx])) for n, idx in groups.items()]
    return blocks, feats[8].out_channels


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec("resnet18", "ResNet18_Weights.IMAGENET1K_V1", _split_resnet),
    "mobilenet_v3_small": BackboneSpec(
        "mobilenet_v3_small", "MobileNet_V3_Small_Weights.IMAGENET1K_V1", _split_mobilenet_v3
    ),
    "efficientnet_b0": BackboneSpec(
        "efficientnet_b0", "EfficientNet_B0_Weights.IMAGENET1K_V1", _split_efficientnet
    ),
}


def _check_backbone(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def weights_file(name: str) -> Path:
    """Where torchvision's cache keeps `name`'s ImageNet weights ($TORCH_HOME/hub/checkpoints)."""
    from torchvision.models import get_weight

    url = get_weight(_check_backbone(name).weights).url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def weights_cached(name: str) -> bool:
    """True when `name`'s ImageNet weights are in the torchvision cache."""
    return weights_file(name).exists()


def weights_intact(name: str) -> bool:
    """True when the cached weights match the SHA-256 prefix in their file name.

    torchvision names weight files `<arch>-<first hex digits of sha256>.pth`; torch.hub
    checks that on download, this checks it again for copied or truncated caches.
    """
    import hashlib

    path = weights_file(name)
    if not path.exists():
        return False
    prefix = path.stem.rsplit("-", 1)[-1]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest().startswith(prefix)


def weights_transforms(name: str) -> Callable:
    """The preprocessing the pretrained weights declare (resize, crop, ImageNet normalisation)."""
    from torchvision.models import get_weight

    return get_weight(_check_backbone(name).weights).transforms()


def fetch_weights(name: str) -> Path:
    """Download `name`'s ImageNet weights into torchvision's cache (checksum-verified)."""
    from torchvision.models import get_weight

    from .data import network_available

    weights = get_weight(_check_backbone(name).weights)
    if weights_intact(name):
        return weights_file(name)
    if weights_cached(name):
        # torch.hub never re-downloads a file that exists, so a bad copy must go first.
        print(f"{weights_file(name)} fails its checksum (interrupted copy?): downloading again")
        weights_file(name).unlink()
    if not network_available("download.pytorch.org"):
        raise WeightsUnavailableError(
            f"ImageNet weights for {name} are not in {weights_file(name).parent} and there is "
            f"no network. Run `tl-course fetch {name}` with internet, or copy a TORCH_HOME "
            "cache here."
        )
    weights.get_state_dict(progress=True, check_hash=True)
    return weights_file(name)


def create_backbone(name: str, num_classes: int, pretrained: bool = True,
                    dropout: float = 0.0) -> TransferModel:
    """A torchvision model by name as a TransferModel with a new `num_classes` head.

    pretrained=True loads ImageNet weights through torchvision's weights API (cache first,
    then download); when neither works it raises WeightsUnavailableError naming the fetch
    command. It never silently returns random weights as "pretrained".
    """
    import torchvision

    spec = _check_backbone(name)
    model = getattr(torchvision.models, spec.builder)(weights=None)
    if pretrained:
        if not weights_cached(name):
            fetch_weights(name)
        try:
            state = torch.load(weights_file(name), map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
            # A truncated copy or not a checkpoint at all.
            raise WeightsUnavailableError(
                f"{weights_file(name)} cannot be read ({type(exc).__name__}); run "
                f"`tl-course fetch {name}` to download it again"
            ) from None
        model.load_state_dict(state)
    blocks, dim = spec.split(model)
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return TransferModel(blocks, pool, dim, num_classes, dropout)


# --------------------------------------------------------------------------- freezing


def _resolve_blocks(model: TransferModel, names: Iterable[str]) -> list[str]:
    names = list(names)
    unknown = [n for n in names if n not in model.blocks]
    if unknown:
        raise UnknownModelError(
            f"unknown block {', '.join(map(repr, unknown))}; this model has: "
            f"{', '.join(model.block_names)}"
        )
    return names


def set_trainable(model: TransferModel, trainable_blocks: Iterable[str], head: bool = True,
                  bn: str = "train") -> TransferModel:
    """Make exactly `trainable_blocks` (and the head, if `head`) trainable; freeze the rest.

    bn="frozen" also keeps the BatchNorm layers of frozen blocks in eval mode (running
    statistics untouched by training batches); bn="train" lets them update in train mode.
    """
    if bn not in ("train", "frozen"):
        raise ValueError(f"bn must be 'train' or 'frozen', got {bn!r}")
    names = set(_resolve_blocks(model, trainable_blocks))
    for name, block in model.blocks.items():
        block.requires_grad_(name in names)
    model.frozen_bn = {n for n in model.blocks if n not in names} if bn == "frozen" else set()
    model.head.requires_grad_(head)
    model.train(model.training)  # apply the BatchNorm choice now, too
    return model


def freeze_body(model: TransferModel, bn: str = "frozen") -> TransferModel:
    """Train only the head (a linear probe on the body's features)."""
    return set_trainable(model, [], head=True, bn=bn)


def unfreeze_from(model: TransferModel, block: str, bn: str = "frozen") -> TransferModel:
    """Train `block`, every block after it, and the head; freeze the blocks before it."""
    names = model.block_names
    _resolve_blocks(model, [block])
    return set_trainable(model, names[names.index(block):], head=True, bn=bn)


def unfreeze_all(model: TransferModel) -> TransferModel:
    """Everything trainable, BatchNorm statistics updating."""
    return set_trainable(model, model.block_names, head=True, bn="train")


def trainable_blocks(model: TransferModel) -> list[str]:
    """Names of the blocks with at least one trainable parameter."""
    return [n for n, b in model.blocks.items() if any(p.requires_grad for p in b.parameters())]


def param_groups(model: TransferModel, lr: float, decay: float = 0.5) -> list[dict]:
    """Discriminative learning rates: the head gets `lr`, each earlier block `decay` times less.

    Only trainable parameters are included; frozen blocks are left out.
    """
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    groups = []
    head = [p for p in model.head.parameters() if p.requires_grad]
    if head:
        groups.append({"params": head, "lr": lr, "name": "head"})
    for depth, (name, block) in enumerate(reversed(list(model.blocks.items())), start=1):
        params = [p for p in block.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": lr * decay**depth, "name": name})
    if not groups:
        raise ValueError("no trainable parameters: unfreeze something first")
    return groups


def weight_shift(model: TransferModel, reference: TransferModel) -> dict[str, float]:
    """How far each block's weights moved from `reference`'s: ||w - w0|| / ||w0|| per block.

    Both models must have the same blocks (e.g. a fine-tuned copy and its source). The head
    is left out: a new head has no pretrained weights to move from.
    """
    if list(model.blocks) != list(reference.blocks):
        raise ValueError(f"blocks differ: {list(model.blocks)} vs {list(reference.blocks)}")
    shift = {}
    for name, block in model.blocks.items():
        ref = dict(reference.blocks[name].named_parameters())
        diff = sum(float((p.detach().cpu() - ref[n].detach().cpu()).pow(2).sum())
                   for n, p in block.named_parameters())
        norm = sum(float(ref[n].detach().cpu().pow(2).sum()) for n, _ in block.named_parameters())
        shift[name] = (diff / norm) ** 0.5 if norm > 0 else float("nan")
    return shift
