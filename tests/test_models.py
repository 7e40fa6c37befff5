import pytest
import torch

from tl_course.models import MLP, DigitCNN, conv_block, count_parameters


def test_mlp_output_shape():
    out = MLP()(torch.rand(5, 1, 28, 28))
    assert out.shape == (5, 10)


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
    for p in model.body.parameters():
        p.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == head
    assert count_parameters(model) == total


def test_conv_block_halves_resolution():
    out = conv_block(1, 6)(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 6, 14, 14)


@pytest.mark.parametrize("width", [4, 8])
def test_digit_cnn_features_and_head(width):
    model = DigitCNN(num_classes=7, width=width).eval()
    x = torch.rand(3, 1, 28, 28)
    feats = model.features(x)
    assert feats.shape == (3, model.feature_dim) and model.feature_dim == 2 * width * 4
    logits = model(x)
    assert logits.shape == (3, 7)
    assert torch.allclose(model.head(feats), logits)


def test_replacing_the_head_keeps_the_features():
    model = DigitCNN(width=4).eval()
    x = torch.rand(2, 1, 28, 28)
    before = model.features(x)
    model.head = torch.nn.Linear(model.feature_dim, 2)
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
