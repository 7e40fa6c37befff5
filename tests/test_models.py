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


# ----------------------------------------------------------------- defining properties (issue 17)


def _tiny_loader(n: int = 16, batch: int = 8, seed: int = 0):
    from torch.utils.data import DataLoader, TensorDataset

    gen = torch.Generator().manual_seed(seed)
    ds = TensorDataset(torch.rand(n, 1, 28, 28, generator=gen) * 3, torch.arange(n) % 10)
    return DataLoader(ds, batch_size=batch)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("how", ["freeze_body", "unfreeze_from"])
def test_frozen_blocks_are_bit_identical_after_fit_buffers_included(how, cpu):
    from tl_course.train import fit

    torch.manual_seed(0)
    model = DigitCNN(width=4)
    if how == "freeze_body":
        freeze_body(model)  # bn="frozen"
        frozen, trained = ["block1", "block2"], []
    else:
        unfreeze_from(model, "block2")
        frozen, trained = ["block1"], ["block2"]
    before = {n: _snapshot(model.blocks[n]) for n in model.block_names}
    head_before = _snapshot(model.head)
    fit(model, _tiny_loader(), epochs=2, device=cpu, lr=1e-2, weight_decay=0.1,
        progress=False)
    for name in frozen:  # parameters, running statistics and batch counters
        assert _identical(before[name], _snapshot(model.blocks[name])), name
    for name in trained:
        assert not _identical(before[name], _snapshot(model.blocks[name])), name
    assert not _identical(head_before, _snapshot(model.head))


def test_bn_train_lets_a_frozen_blocks_statistics_follow_the_data_but_not_its_weights(cpu):
    from tl_course.train import fit

    torch.manual_seed(0)
    model = set_trainable(DigitCNN(width=4), ["block2"], bn="train")
    block1 = model.blocks["block1"]
    weights = {k: v.clone() for k, v in block1.named_parameters()}
    stats = block1[1].running_mean.clone()
    fit(model, _tiny_loader(), epochs=1, device=cpu, lr=1e-2, progress=False)
    assert all(torch.equal(weights[k], v) for k, v in block1.named_parameters())
    assert not torch.equal(stats, block1[1].running_mean)


@pytest.mark.parametrize("decay", [0.3, 0.5, 1.0])
def test_param_groups_fall_by_decay_per_block_from_the_head_down(decay):
    model = unfreeze_all(create_backbone("resnet18", 4, pretrained=False))
    lr = 0.02
    groups = param_groups(model, lr=lr, decay=decay)
    names = ["head", *reversed(model.block_names)]
    assert [g["name"] for g in groups] == names
    for depth, (group, name) in enumerate(zip(groups, names, strict=True)):
        assert group["lr"] == pytest.approx(lr * decay**depth)
        owner = model.head if name == "head" else model.blocks[name]
        assert [id(p) for p in group["params"]] == [id(p) for p in owner.parameters()]


def test_param_groups_train_each_block_at_its_own_rate():
    """One SGD step with the groups: every parameter moves by -its group's lr x its grad."""
    torch.manual_seed(0)
    model = unfreeze_all(DigitCNN(width=4))
    groups = param_groups(model, lr=0.1, decay=0.25)
    opt = torch.optim.SGD(groups)
    before = {id(p): p.detach().clone() for p in model.parameters()}
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    grads = {id(p): p.grad.clone() for p in model.parameters()}
    opt.step()
    rates = {"head": 0.1, "block2": 0.025, "block1": 0.00625}
    for name, rate in rates.items():
        owner = model.head if name == "head" else model.blocks[name]
        for p in owner.parameters():
            assert torch.allclose(p.detach(), before[id(p)] - rate * grads[id(p)], atol=1e-7)


def test_set_trainable_freezes_exactly_the_others_and_keeps_the_mode():
    model = DigitCNN(width=4).eval()
    set_trainable(model, ["block1"], head=True, bn="frozen")
    assert not model.training  # the model's own mode is not switched
    assert _trainable(model.blocks["block1"]) == {True}
    assert _trainable(model.blocks["block2"]) == {False}
    assert model.frozen_bn == {"block2"}
    model.train()
    assert _bn_modes(model.blocks["block1"]) == {True}
    assert _bn_modes(model.blocks["block2"]) == {False}


def test_reset_head_is_a_fresh_trainable_linear_layer_of_the_right_size():
    torch.manual_seed(0)
    model = freeze_body(DigitCNN(width=4, dropout=0.3))
    old = model.head[-1].weight.detach().clone()
    model.reset_head(3)
    assert model.head[-1].in_features == model.feature_dim
    assert model.head[-1].out_features == 3
    assert isinstance(model.head[0], nn.Dropout) and model.head[0].p == 0.3
    assert _trainable(model.head) == {True}
    assert old.shape != model.head[-1].weight.shape


# ----------------------------------------------------------------- architecture and weights


def test_conv_block_and_digit_cnn_are_the_documented_networks():
    block = conv_block(3, 8)
    kinds = [type(m) for m in block]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d, nn.ReLU,
                     nn.MaxPool2d]
    convs = [m for m in block if isinstance(m, nn.Conv2d)]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None
               for c in convs)
    assert count_parameters(block) == 9 * 3 * 8 + 9 * 8 * 8 + 4 * 8
    model = DigitCNN()
    assert model.blocks["block1"][0].out_channels == 32 and model.head[-1].out_features == 10
    assert isinstance(model.head[0], nn.Dropout) and model.head[0].p == 0.0
    assert DigitCNN(dropout=0.25).head[0].p == 0.25
    assert [m.p for m in MLP().net if isinstance(m, nn.Dropout)] == [0.0, 0.0]
    assert [m.p for m in MLP(dropout=0.3).net if isinstance(m, nn.Dropout)] == [0.3, 0.3]


def _concatenated(blocks) -> list[nn.Module]:
    return [m for _, block in blocks for m in block]


def test_backbone_splits_cover_every_layer_once_in_order():
    """The named blocks are the torchvision network's own layers, each exactly once, in
    order: a forward pass through them equals torchvision's forward."""
    import torchvision

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    blocks, dim = models._split_resnet(resnet)
    assert [n for n, _ in blocks] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    stem = list(blocks[0][1])
    want = [resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool]
    assert len(stem) == 4 and all(a is b for a, b in zip(stem, want, strict=True))
    assert dim == 512
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        h = x
        for _, block in blocks:
            h = block(h)
        assert torch.allclose(resnet.fc(h.mean(dim=(2, 3))), resnet(x), atol=1e-5)

    for builder, split, names, dim_want in (
            ("mobilenet_v3_small", models._split_mobilenet_v3,
             ["stem", "stage1", "stage2", "stage3", "stage4", "head_conv"], 576),
            ("efficientnet_b0", models._split_efficientnet,
             ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "head_conv"], 1280)):
        net = getattr(torchvision.models, builder)(weights=None)
        blocks, dim = split(net)
        assert [n for n, _ in blocks] == names, builder
        assert dim == dim_want
        layers = _concatenated(blocks)
        assert len(layers) == len(net.features)
        assert all(a is b for a, b in zip(layers, net.features, strict=True)), builder


def test_create_backbone_defaults_to_pretrained_weights_and_no_dropout(torch_home):
    with pytest.raises(WeightsUnavailableError):  # pretrained=True unless told otherwise
        create_backbone("mobilenet_v3_small", 3)
    model = create_backbone("mobilenet_v3_small", 3, pretrained=False)
    assert isinstance(model.head[0], nn.Dropout) and model.head[0].p == 0.0
    assert create_backbone("resnet18", 3, pretrained=False, dropout=0.2).head[0].p == 0.2


def test_weights_transforms_are_the_weights_own_preprocessing():
    from torchvision.models import ResNet18_Weights

    got = models.weights_transforms("resnet18")
    want = ResNet18_Weights.IMAGENET1K_V1.transforms()
    assert (got.crop_size, got.resize_size, got.mean, got.std) == (
        want.crop_size, want.resize_size, want.mean, want.std)


def test_weights_file_is_named_like_the_download(torch_home):
    from torchvision.models import get_weight

    url = get_weight(models.BACKBONES["efficientnet_b0"].weights).url
    assert models.weights_file("efficientnet_b0").name == url.rsplit("/", 1)[-1]


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("stem", ["tf-net-b0-{p}", "resnet18-{p}", "plain"])
def test_weights_intact_compares_the_sha256_prefix_in_the_name(tmp_path, monkeypatch, stem):
    data = bytes(range(256)) * 9000  # a little over 2 MiB: read in several chunks
    prefix = _sha256(data)[:8]
    path = tmp_path / (stem.format(p=prefix) + ".pth")
    monkeypatch.setattr(models, "weights_file", lambda name: path)
    assert not models.weights_intact("resnet18")  # missing
    path.write_bytes(data)
    assert models.weights_intact("resnet18") == ("{p}" in stem)
    path.write_bytes(data[:-1])  # truncated copy
    assert not models.weights_intact("resnet18")


class _FakeWeights:
    """Stands in for a torchvision weights entry: records downloads, writes the file."""

    def __init__(self, url: str, data: bytes):
        self.url, self.data, self.calls = url, data, []

    def get_state_dict(self, **kwargs):
        from pathlib import Path

        self.calls.append(kwargs)
        target = Path(torch.hub.get_dir()) / "checkpoints" / self.url.rsplit("/", 1)[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.data)
        return {}


@pytest.fixture
def fake_weights(torch_home, monkeypatch):
    import torchvision.models

    data = b"weights" * 1000
    fake = _FakeWeights(f"https://download.pytorch.org/models/resnet18-{_sha256(data)[:8]}.pth",
                        data)
    monkeypatch.setattr(torchvision.models, "get_weight", lambda name: fake)
    return fake


def test_fetch_weights_downloads_checked_weights_once(fake_weights, monkeypatch):
    hosts = []
    monkeypatch.setattr("tl_course.data.network_available",
                        lambda host, *a, **k: hosts.append(host) or True)
    path = models.fetch_weights("resnet18")
    assert path == models.weights_file("resnet18") and path.read_bytes() == fake_weights.data
    assert fake_weights.calls == [{"progress": True, "check_hash": True}]
    assert hosts == ["download.pytorch.org"]
    assert models.fetch_weights("resnet18") == path  # intact: no second download
    assert len(fake_weights.calls) == 1


def test_fetch_weights_replaces_a_damaged_copy(fake_weights, monkeypatch, capsys):
    monkeypatch.setattr("tl_course.data.network_available", lambda *a, **k: True)
    path = models.weights_file("resnet18")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a file")
    assert models.fetch_weights("resnet18") == path
    assert path.read_bytes() == fake_weights.data and len(fake_weights.calls) == 1
    assert "fails its checksum" in capsys.readouterr().out


def test_fetch_weights_offline_removes_a_damaged_copy_and_says_what_to_do(fake_weights):
    path = models.weights_file("resnet18")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a file")
    with pytest.raises(WeightsUnavailableError, match="tl-course fetch resnet18"):
        models.fetch_weights("resnet18")
    assert not path.exists() and fake_weights.calls == []


def test_weight_shift_of_every_block_against_a_hand_computation():
    import copy

    torch.manual_seed(0)
    ref = models.DigitCNN(num_classes=5, width=4)
    moved = copy.deepcopy(ref)
    with torch.no_grad():
        for i, p in enumerate(moved.parameters()):
            p.mul_(1 + 0.1 * (i % 3))
    shift = models.weight_shift(moved, ref)
    for name in ref.block_names:
        a = torch.cat([p.detach().flatten() for p in moved.blocks[name].parameters()])
        b = torch.cat([p.detach().flatten() for p in ref.blocks[name].parameters()])
        assert shift[name] == pytest.approx(float((a - b).norm() / b.norm()), rel=1e-6)
    assert list(shift) == ref.block_names


def test_set_trainable_trains_the_head_unless_told_otherwise():
    model = set_trainable(DigitCNN(width=4), ["block1"])
    assert _trainable(model.head) == {True}
    with pytest.raises(ValueError, match="decay"):
        param_groups(model, lr=0.1, decay=1.5)


def test_weight_shift_of_small_and_of_all_zero_reference_weights():
    import copy
    import math

    torch.manual_seed(0)
    ref = models.DigitCNN(num_classes=5, width=4)
    with torch.no_grad():
        for p in ref.blocks["block1"].parameters():
            p.mul_(1e-3)  # a block whose weights have norm below 1
        for p in ref.blocks["block2"].parameters():
            p.zero_()  # nothing to move from
    moved = copy.deepcopy(ref)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(1e-4)
    shift = models.weight_shift(moved, ref)
    a = torch.cat([p.detach().flatten() for p in moved.blocks["block1"].parameters()])
    b = torch.cat([p.detach().flatten() for p in ref.blocks["block1"].parameters()])
    assert shift["block1"] == pytest.approx(float((a - b).norm() / b.norm()), rel=1e-5)
    assert math.isnan(shift["block2"])


class _Marker:
    """Unpickling this runs code: it creates a file (what a malicious checkpoint would do)."""

    path = None

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_pretrained_loading_never_runs_pickled_code(torch_home, tmp_path):
    marker = tmp_path / "code-ran"
    _Marker.path = marker
    path = weights_file("mobilenet_v3_small")
    path.parent.mkdir(parents=True)
    torch.save({"features.0.0.weight": _Marker()}, path)
    with pytest.raises(WeightsUnavailableError, match="cannot be read"):
        create_backbone("mobilenet_v3_small", 3, pretrained=True)
    assert not marker.exists()


def test_transfer_model_head_has_no_dropout_by_default():
    model = models.TransferModel([("only", nn.Conv2d(1, 2, 3))],
                                 nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), 2, 4)
    assert isinstance(model.head[0], nn.Dropout) and model.head[0].p == 0.0
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 4)
