"""Models of the digit world: an MLP and a small CNN.

Both take (N, 1, 28, 28) images in [0, 1]. The CNN is split into `features`
(what transfers) and `head` (what a new task replaces), the shape every later
module relies on.
"""

from __future__ import annotations

from torch import nn


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

    def forward(self, x):
        return self.net(x)


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 convolutions with BatchNorm and ReLU, then 2x2 max pooling (halves H and W)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.MaxPool2d(2),
    )


class DigitCNN(nn.Module):
    """A small CNN: two conv blocks (28 -> 14 -> 7), pooling to 2x2, a linear head.

    `features(x)` gives the embedding (N, feature_dim); `head` maps it to class logits.
    Pooling to 2x2 rather than 1x1 keeps a little "where" information, which is worth
    about one point of MNIST accuracy for no extra convolution cost.
    """

    def __init__(self, num_classes: int = 10, width: int = 32, dropout: float = 0.0):
        super().__init__()
        self.feature_dim = 2 * width * 4
        self.body = nn.Sequential(
            conv_block(1, width), conv_block(width, 2 * width),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, num_classes))

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with requires_grad when trainable_only)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
