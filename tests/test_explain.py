"""tl_course.explain.grad_cam: against Grad-CAM computed by hand, a model that only looks
at one corner, its defaults, its refusals and what it leaves behind on the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tl_course.explain import grad_cam
from tl_course.models import DigitCNN, TransferModel, freeze_body
from tl_course.selfsup.pretext import DigitEncoder


def manual_grad_cam(model: TransferModel, images: torch.Tensor, target: torch.Tensor,
                    block: str) -> torch.Tensor:
    """Selvaraju et al. (2017) step by step: run the blocks by hand, take the gradient of
    the target logits with respect to `block`'s output, weight each channel by its mean
    gradient, ReLU of the weighted sum, bilinear upsampling, divided by the maximum
    (a map with no positive part stays all zeros)."""
    model.eval()
    x = images
    maps = None
    for name, module in model.blocks.items():
        x = module(x)
        if name == block:
            x = x.detach().requires_grad_(True)  # a leaf: its gradient is what we want
            maps = x
    logits = model.head(model.pool(x))
    score = logits[torch.arange(len(images)), target].sum()
    (grads,) = torch.autograd.grad(score, maps)
    cams = []
    for i in range(len(images)):
        w = grads[i].mean(dim=(1, 2))  # one weight per channel
        cam = torch.relu((w[:, None, None] * maps[i].detach()).sum(0))
        up = F.interpolate(cam[None, None], size=images.shape[-2:], mode="bilinear",
                           align_corners=False)[0, 0]
        cams.append(up / up.max() if up.max() > 0 else up)  # no positive evidence: zeros
    return torch.stack(cams)


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("make, block", [
    (lambda: DigitEncoder(num_classes=5), "block1"),
    (lambda: DigitEncoder(num_classes=5), "block2"),
    (lambda: DigitCNN(num_classes=4, width=8), "block1"),
    (lambda: DigitCNN(num_classes=4, width=8), "block2"),
])
def test_grad_cam_matches_the_manual_computation(make, block):
    torch.manual_seed(0)
    model = make()
    x = _images()
    target = torch.tensor([0, 1, 2, 3])
    got = grad_cam(model, x, target=target, block=block)
    want = manual_grad_cam(model, x, target, block)
    assert got.shape == (4, 28, 28)
    assert torch.allclose(got, want, atol=1e-5)
    assert (want.flatten(1).max(1).values == 1).sum() >= 2  # most maps are not empty


def test_grad_cam_defaults_to_the_last_block_and_the_predicted_class():
    torch.manual_seed(1)
    model = DigitEncoder(num_classes=5)
    x = _images(6, seed=1)
    with torch.no_grad():
        predicted = model.eval()(x).argmax(1)
    got = grad_cam(model, x)
    assert torch.allclose(got, manual_grad_cam(model, x, predicted, "block2"), atol=1e-5)
    assert torch.allclose(got, grad_cam(model, x, target=predicted, block="block2"))
    other = (predicted + 1) % 5
    assert not torch.allclose(got, grad_cam(model, x, target=other), atol=1e-3)


class CornerSplit(nn.Module):
    """A 3x3 convolution whose response is split in two channels: inside the top-left
    8 x 8 corner, and everywhere else."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        nn.init.constant_(self.conv.weight, 1 / 9)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        mask = torch.zeros_like(y)
        mask[..., :8, :8] = 1
        return torch.cat([y * mask, y * (1 - mask)], 1)


def _corner_model() -> TransferModel:
    """Class 0's score is the mean response in the top-left corner, class 1 its negative:
    the rest of the image reaches the head (channel 2) with weight 0."""
    model = TransferModel([("corner", CornerSplit())],
                          nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), 2, 2)
    with torch.no_grad():
        model.head[-1].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        model.head[-1].bias.zero_()
    return model


def test_a_model_that_reads_only_the_top_left_corner_gets_a_map_there():
    x = _images(3, seed=2) + 0.1
    cam = grad_cam(_corner_model(), x, target=torch.zeros(3, dtype=torch.long))
    for m in cam:
        row, col = divmod(int(m.argmax()), 28)
        assert row < 8 and col < 8
        assert m[:8, :8].mean() > 0.3
        assert m[10:, :].max() == 0 and m[:, 10:].max() == 0  # nothing past the corner


def test_grad_cam_output_is_in_0_1_with_one_map_per_image():
    torch.manual_seed(3)
    model = DigitCNN(num_classes=3, width=8)
    cam = grad_cam(model, _images(5, seed=3))
    assert cam.shape == (5, 28, 28)
    assert cam.min() >= 0 and cam.max() <= 1
    assert torch.allclose(cam.flatten(1).max(1).values, torch.ones(5))
    # A class the model scores against everywhere has no positive evidence: all zeros.
    zero = grad_cam(_corner_model(), _images(2) + 0.1, target=torch.ones(2, dtype=torch.long))
    assert torch.equal(zero, torch.zeros(2, 28, 28))


def test_grad_cam_leaves_no_gradients_and_puts_the_model_in_eval_mode():
    torch.manual_seed(4)
    model = DigitCNN(num_classes=3, width=8)
    model.train()
    grad_cam(model, _images(2))
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert not model.blocks["block2"]._forward_hooks  # the hook is removed


def test_grad_cam_refuses_an_unknown_block():
    with pytest.raises(ValueError, match="unknown block 'layer9'"):
        grad_cam(DigitCNN(num_classes=3, width=8), _images(1), block="layer9")


def test_grad_cam_refuses_a_model_without_blocks():
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(TypeError, match="TransferModel"):
        grad_cam(plain, _images(1))


def test_grad_cam_refuses_images_that_are_not_4d():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        grad_cam(DigitCNN(num_classes=3, width=8), torch.zeros(1, 28, 28))


def test_grad_cam_works_on_a_model_with_a_frozen_body():
    """A linear probe (freeze_body: no block parameter needs gradients) is a model the
    course trains and explains; Grad-CAM only needs gradients of the block's output,
    not of the weights, and it should leave the frozen flags as they were."""
    torch.manual_seed(5)
    model = freeze_body(DigitCNN(num_classes=3, width=8))
    x = _images(2, seed=5)
    target = torch.tensor([0, 2])
    got = grad_cam(model, x, target=target)
    assert torch.allclose(got, manual_grad_cam(model, x, target, "block2"), atol=1e-5)
    assert not any(p.requires_grad for p in model.blocks.parameters())
