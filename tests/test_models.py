import pytest
import torch
from torch import nn

from tl_course import models
from tl_course.models import (
    MLP,
    DigitCNN,
    UnknownModelError,
    WeightsUnavailableError,
    conv_block,
    count_parameters,
    create_backbone,
    freeze_body,
    param_groups,
    set_trainable,
    trainable_blocks,
    unfreeze_all,
    unfreeze_from,
    weights_cached,
    weights_file,
)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torchvision weights cache ($TORCH_HOME/hub/checkpoints)."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def _trainable(module: nn.Module) -> set[bool]:
    return {p.requires_grad for p in module.parameters()}


def _bn_modes(module: nn.Module) -> set[bool]:
    return {m.training for m in module.modules() if isinstance(m, nn.BatchNorm2d)}


# ----------------------------------------------------------------- digit models


def test_mlp_output_shape():
    assert MLP()(torch.rand(5, 1, 28, 28)).shape == (5, 10)


def test_mlp_parameter_count_matches_formula():
    hidden = (256, 128)
    widths = [28 * 28, *hidden, 10]
    expected = sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))
    assert count_parameters(MLP(hidden=hidden)) == expected
    assert count_parameters(MLP(hidden=(), num_classes=3)) == 784 * 3 + 3


def test_count_parameters_trainable_only():
    model = DigitCNN(width=4)
    total = count_parameters(model)
    head = sum(p.numel() for p in model.head.parameters())
    freeze_body(model)
    assert count_parameters(model, trainable_only=True) == head
    assert count_parameters(model) == total


def test_conv_block_halves_resolution():
    assert conv_block(1, 6)(torch.rand(2, 1, 28, 28)).shape == (2, 6, 14, 14)


@pytest.mark.parametrize("width", [4, 8])
def test_digit_cnn_features_and_head(width):
    model = DigitCNN(num_classes=7, width=width).eval()
    x = torch.rand(3, 1, 28, 28)
    feats = model.features(x)
    assert feats.shape == (3, model.feature_dim) and model.feature_dim == 2 * width * 4
    logits = model(x)
    assert logits.shape == (3, 7)
    assert torch.allclose(model.head(feats), logits)
    assert model.block_names == ["block1", "block2"]


def test_reset_head_keeps_the_features():
    model = DigitCNN(width=4).eval()
    x = torch.rand(2, 1, 28, 28)
    before = model.features(x)
    old_head = model.head
    assert model.reset_head(2) is model
    assert model.head is not old_head
    assert model(x).shape == (2, 2)
    assert torch.equal(model.features(x), before)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = MLP(hidden=(64,), dropout=0.5)
    x = torch.rand(4, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


# ----------------------------------------------------------------- freezing


def test_freeze_body_trains_only_the_head():
    model = freeze_body(DigitCNN(width=4))
    assert _trainable(model.head) == {True}
    for block in model.blocks.values():
        assert _trainable(block) == {False}
    assert trainable_blocks(model) == []
    # bn="frozen" (the default): frozen blocks' BatchNorm stays in eval mode in train().
    model.train()
    assert _bn_modes(model) == {False}
    assert model.head.training


def test_frozen_batchnorm_statistics_do_not_move():
    model = freeze_body(DigitCNN(width=4)).train()
    bn = model.blocks["block1"][1]
    before = bn.running_mean.clone()
    model(torch.rand(8, 1, 28, 28) * 5)
    assert torch.equal(bn.running_mean, before)
    set_trainable(model, [], bn="train").train()
    model(torch.rand(8, 1, 28, 28) * 5)
    assert not torch.equal(bn.running_mean, before)


def test_unfreeze_from_and_all():
    model = unfreeze_from(DigitCNN(width=4), "block2")
    assert trainable_blocks(model) == ["block2"]
    assert _trainable(model.blocks["block1"]) == {False}
    model.train()
    assert _bn_modes(model.blocks["block1"]) == {False}
    assert _bn_modes(model.blocks["block2"]) == {True}
    unfreeze_all(model).train()
    assert trainable_blocks(model) == ["block1", "block2"]
    assert _trainable(model) == {True} and _bn_modes(model) == {True}


def test_set_trainable_without_head():
    model = set_trainable(DigitCNN(width=4), ["block1"], head=False)
    assert trainable_blocks(model) == ["block1"]
    assert _trainable(model.head) == {False}


def test_unknown_block_lists_the_model_blocks():
    with pytest.raises(UnknownModelError) as info:
        unfreeze_from(DigitCNN(width=4), "layer3")
    assert "layer3" in str(info.value) and "block1" in str(info.value)
    with pytest.raises(ValueError, match="bn"):
        set_trainable(DigitCNN(width=4), [], bn="maybe")


def test_param_groups_discriminative_lrs():
    model = unfreeze_all(DigitCNN(width=4))
    groups = param_groups(model, lr=1.0, decay=0.5)
    assert [g["name"] for g in groups] == ["head", "block2", "block1"]
    assert [g["lr"] for g in groups] == pytest.approx([1.0, 0.5, 0.25])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    torch.optim.AdamW(groups)  # directly usable


def test_param_groups_leave_frozen_blocks_out():
    model = unfreeze_from(DigitCNN(width=4), "block2")
    groups = param_groups(model, lr=0.1)
    assert [g["name"] for g in groups] == ["head", "block2"]
    frozen = set(map(id, model.blocks["block1"].parameters()))
    assert not any(id(p) in frozen for g in groups for p in g["params"])
    with pytest.raises(ValueError):
        param_groups(set_trainable(model, [], head=False), lr=0.1)
    with pytest.raises(ValueError, match="decay"):
        param_groups(model, lr=0.1, decay=0.0)


# ----------------------------------------------------------------- torchvision backbones


def test_unknown_backbone():
    with pytest.raises(UnknownModelError, match="resnet18"):
        create_backbone("vgg_giant", 10, pretrained=False)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_backbone_without_weights(name, torch_home):
    model = create_backbone(name, num_classes=3, pretrained=False).eval()
    x = torch.rand(2, 3, 64, 64)
    feats = model.features(x)
    assert feats.shape == (2, model.feature_dim)
    assert model(x).shape == (2, 3)
    assert len(model.block_names) >= 4
    assert not torch_home.exists()  # nothing downloaded or cached


def test_pretrained_weights_offline_say_how_to_fetch(torch_home):
    assert not weights_cached("mobilenet_v3_small")
    with pytest.raises(WeightsUnavailableError) as info:
        create_backbone("mobilenet_v3_small", 10, pretrained=True)
    msg = str(info.value)
    assert "tl-course fetch mobilenet_v3_small" in msg
    assert str(weights_file("mobilenet_v3_small").parent) in msg


def test_pretrained_weights_load_from_the_torchvision_cache(torch_home):
    """The real loading path, offline: a state_dict where torchvision keeps its weights."""
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v3_small(weights=None)
    path = weights_file("mobilenet_v3_small")
    assert path.parent == torch_home / "hub" / "checkpoints"
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    assert weights_cached("mobilenet_v3_small")

    torch.manual_seed(1)  # a different random init, so equality means "loaded"
    model = create_backbone("mobilenet_v3_small", num_classes=4, pretrained=True)
    first_conv = model.blocks["stem"][0][0].weight
    assert torch.equal(first_conv, reference.features[0][0].weight)
    assert model.head[-1].out_features == 4


def test_fetch_weights_offline(torch_home):
    with pytest.raises(WeightsUnavailableError, match="no network"):
        models.fetch_weights("resnet18")


# ----------------------------------------------------------------- weight_shift


def test_weight_shift_is_relative_l2_per_block():
    import copy

    torch.manual_seed(0)
    ref = models.DigitCNN(num_classes=5, width=4)
    moved = copy.deepcopy(ref)
    with torch.no_grad():
        for p in moved.blocks["block2"].parameters():
            p.add_(0.1 * torch.randn_like(p))
        moved.head[-1].weight.add_(5.0)  # the head is not a block: ignored
    shift = models.weight_shift(moved, ref)
    assert set(shift) == set(ref.blocks)
    assert shift["block1"] == 0.0
    # Independent reference: flatten every parameter of the block.
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.blocks["block2"].parameters()])
    expected = float((flat(moved) - flat(ref)).norm() / flat(ref).norm())
    assert shift["block2"] == pytest.approx(expected, rel=1e-6)


def test_weight_shift_needs_the_same_blocks():
    a = models.DigitCNN(num_classes=5, width=4)
    b = models.create_backbone("resnet18", 5, pretrained=False)
    with pytest.raises(ValueError, match="blocks differ"):
        models.weight_shift(a, b)
