"""The digit network of the DANN paper (Ganin et al., 2016), used by every method of notebook 04.

Ganin et al.'s MNIST -> MNIST-M network: conv 5x5 (32) -> max-pool -> conv 5x5 (48) ->
max-pool gives 48 x 4 x 4 = 768 features; the label predictor is FC 100 -> FC 100 -> 10;
DANN's domain classifier (tlc.adapt.DomainDiscriminator) is FC 100 -> 1 on the same
768 features.

Two choices of ours, the same for every method (source-only, AdaBN, CORAL, DANN, oracle):
- Each image is standardised on its own (zero mean, unit standard deviation over its
  pixels) as the network's first layer. Ganin et al. subtract the mean pixel instead; per
  image, an MNIST digit on black and an MNIST-M digit on a bright photo land on comparable
  scales, which uses no labels and no target statistics.
- `batchnorm=True` adds BatchNorm after each convolution and each hidden FC layer: the
  paper's network has none, but AdaBN has nothing to adapt without it.
- `normalize` chooses the input normalisation: "image" (the default above), "batch" (a
  BatchNorm layer on the input: the training set's pixel mean and variance per channel,
  close to the paper's mean-pixel subtraction) or "none". Notebook 04 uses "batch" to
  show the shift that BatchNorm statistics carry, and that AdaBN removes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models import TransferModel

NORMALIZE: tuple[str, ...] = ("image", "batch", "none")


class Standardize(nn.Module):
    """Per-image standardisation: subtract each image's mean, divide by its std (all pixels)."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        std = x.std(dim=dims, keepdim=True)
        return (x - mean) / (std + self.eps)


def _conv(c_in: int, c_out: int, batchnorm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 5)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(c_out))
    return nn.Sequential(*layers, nn.ReLU(inplace=True), nn.MaxPool2d(2))


class GaninCNN(TransferModel):
    """Ganin et al.'s MNIST network on 3 x 28 x 28 input: 768 features, FC 100-100 head.

    A TransferModel: `features(x)` gives the (N, 768) input of the label predictor and of
    DANN's domain classifier; `head` is the label predictor.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True,
                 hidden: int = 100, normalize: str = "image"):
        if normalize not in NORMALIZE:
            raise ValueError(f"unknown input normalisation {normalize!r}; choose one of: "
                             f"{', '.join(NORMALIZE)}")
        blocks: list[tuple[str, nn.Module]] = []
        if normalize == "image":
            blocks.append(("standardize", Standardize()))
        elif normalize == "batch":  # the training set's pixel statistics, per channel
            blocks.append(("input_bn", nn.BatchNorm2d(in_channels)))
        blocks += [("block1", _conv(in_channels, 32, batchnorm)),
                   ("block2", _conv(32, 48, batchnorm))]
        super().__init__(blocks, nn.Flatten(), 48 * 4 * 4, num_classes)

        def fc(n_in: int) -> list[nn.Module]:
            norm = [nn.BatchNorm1d(hidden)] if batchnorm else []
            return [nn.Linear(n_in, hidden), *norm, nn.ReLU(inplace=True)]

        self.head = nn.Sequential(*fc(self.feature_dim), *fc(hidden),
                                  nn.Linear(hidden, num_classes))
