"""The NT-Xent loss of SimCLR (Chen et al., 2020), and the labels of rotation prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent_stacked(z: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent of embeddings stacked as (2N, D): rows i and i + N are two views of image i.

    For each of the 2N rows: cross-entropy of picking its partner among the other 2N - 1
    rows, by cosine similarity / temperature. Averaged over all 2N rows.
    """
    if z.dim() != 2:
        raise ValueError(f"nt_xent expects embeddings (2N, D), got shape {tuple(z.shape)}")
    if z.shape[0] % 2 or z.shape[0] < 4:
        raise ValueError(f"nt_xent needs the two views stacked, 2N rows with N >= 2; got "
                         f"{z.shape[0]} rows (an odd count means the views are unpaired)")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = z.shape[0] // 2
    z = F.normalize(z.float(), dim=1)
    logits = z @ z.T / temperature
    # An embedding is not a candidate for its own partner.
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, partner)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent of two views' embeddings, each (N, D), row i of each from image i."""
    if z1.shape != z2.shape:
        raise ValueError(f"the two views' embeddings must have the same shape, got "
                         f"{tuple(z1.shape)} and {tuple(z2.shape)}")
    return nt_xent_stacked(torch.cat([z1, z2]), temperature)


def rotate_batch(x: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate image i of `x` (N, C, H, W) by quarter_turns[i] x 90 degrees anticlockwise."""
    if quarter_turns.shape != (x.shape[0],):
        raise ValueError(f"need one rotation per image: {x.shape[0]} images, "
                         f"{tuple(quarter_turns.shape)} rotations")
    if quarter_turns.numel() and not bool(((quarter_turns >= 0) & (quarter_turns <= 3)).all()):
        # anything else would leave its image as uninitialised memory below
        raise ValueError(f"quarter turns must be 0, 1, 2 or 3; got {quarter_turns.tolist()}")
    out = torch.empty_like(x)
    for k in range(4):
        idx = quarter_turns == k
        if idx.any():
            out[idx] = torch.rot90(x[idx], k, dims=(2, 3))
    return out
