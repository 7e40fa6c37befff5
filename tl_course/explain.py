"""Where a classifier looks: Grad-CAM (Selvaraju et al., 2017) for the course's models.

Grad-CAM weights the feature maps of one block by the mean gradient of a class score
with respect to them, keeps the positive part, and scales it up to the image: the regions
that pushed the prediction towards that class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def grad_cam(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None,
             block: str | None = None) -> torch.Tensor:
    """Grad-CAM maps (N, H, W) in [0, 1] for `images` (N, C, H, W).

    `model` is a TransferModel (its `blocks` by name; default the last); `target` the
    class per image (default: the predicted class). The model is put in eval mode.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError("grad_cam needs a TransferModel (a model with named `blocks`)")
    name = block or list(blocks.keys())[-1]
    if name not in blocks:
        raise ValueError(f"unknown block {name!r}; this model has {', '.join(blocks.keys())}")
    model.eval()
    device = next(model.parameters()).device
    saved: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        if not output.requires_grad:  # a frozen body: start the graph at this block
            output = output.detach().requires_grad_(True)
        output.retain_grad()
        saved["maps"] = output
        return output

    handle = blocks[name].register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(images.to(device))
            if target is None:
                target = logits.argmax(1)
            target = torch.as_tensor(target, device=device).view(-1, 1)
            logits.gather(1, target).sum().backward()
    finally:
        handle.remove()
    maps, grads = saved["maps"], saved["maps"].grad
    weights = grads.mean(dim=(2, 3), keepdim=True)  # one weight per channel and image
    cam = F.relu((weights * maps).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)
    top = cam.flatten(1).max(1).values.clamp(min=1e-12).view(-1, 1, 1, 1)
    model.zero_grad(set_to_none=True)
    return (cam / top)[:, 0].cpu()
