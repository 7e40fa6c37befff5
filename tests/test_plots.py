import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.axes import Axes

from tl_course.plots import (
    confusion_matrix,
    plot_confusion_matrix,
    plot_filters,
    plot_history,
    show_images,
)
from tl_course.train import History


def _history() -> History:
    h = History()
    for tr, va, acc in ((1.0, 1.2, 0.5), (0.6, 0.9, 0.7), (0.3, 0.8, 0.8)):
        h.add("train_loss", tr)
        h.add("val_loss", va)
        h.add("train_acc", acc)
        h.add("seconds", 0.1)
    return h


def test_plot_history_draws_train_and_val():
    ax = plot_history(_history(), "loss", label="cnn")
    assert isinstance(ax, Axes)
    assert len(ax.lines) == 2
    train, val = ax.lines
    assert list(train.get_xdata()) == [1, 2, 3]
    assert list(train.get_ydata()) == [1.0, 0.6, 0.3]
    assert list(val.get_ydata()) == [1.2, 0.9, 0.8]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["cnn train", "cnn val"]
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "loss"


def test_plot_history_only_what_exists_and_on_given_axis():
    _, ax = plt.subplots()
    out = plot_history(_history(), "acc", ax=ax)
    assert out is ax
    assert len(ax.lines) == 1  # no val_acc in this history
    assert list(ax.lines[0].get_ydata()) == [0.5, 0.7, 0.8]


def test_plot_history_accepts_a_dict():
    ax = plot_history({"train_loss": [2.0, 1.0]}, "loss")
    assert len(ax.lines) == 1


def test_show_images_draws_a_grid_with_labels():
    images = torch.rand(16, 1, 28, 28)
    ax = show_images(images, labels=torch.arange(16) % 10, nrow=8, title="digits")
    assert isinstance(ax, Axes)
    assert len(ax.images) == 1
    grid = ax.images[0].get_array()
    # 2 rows x 8 columns of 28x28 tiles with 2-pixel padding.
    assert grid.shape[:2] == (2 * 30 + 2, 8 * 30 + 2)
    title = ax.get_title()
    assert title.startswith("digits") and "0 1 2 3" in title
    assert not ax.axison


def test_show_images_without_labels():
    ax = show_images(torch.zeros(3, 1, 28, 28))
    assert len(ax.images) == 1 and ax.get_title() == ""


def test_confusion_matrix_counts():
    y_true = torch.tensor([0, 0, 1, 2, 2, 2])
    y_pred = torch.tensor([0, 1, 1, 2, 0, 2])
    cm = confusion_matrix(y_true, y_pred, 3)
    expected = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert np.array_equal(cm, expected)
    assert cm.sum() == len(y_true)
    assert np.trace(cm) == int((y_true == y_pred).sum())


def test_confusion_matrix_counts_repeated_pairs():
    # np.add.at, not fancy-index assignment: repeated (true, pred) pairs must add up.
    cm = confusion_matrix(torch.tensor([1, 1, 1]), torch.tensor([0, 0, 0]), 2)
    assert cm[1, 0] == 3


def test_plot_confusion_matrix():
    y_true = torch.tensor([0, 0, 1, 2, 2, 2])
    y_pred = torch.tensor([0, 1, 1, 2, 0, 2])
    ax = plot_confusion_matrix(y_true, y_pred, num_classes=3)
    assert isinstance(ax, Axes)
    assert len(ax.images) == 1
    assert np.array_equal(np.asarray(ax.images[0].get_array()), confusion_matrix(y_true, y_pred, 3))
    # One text per non-zero cell.
    assert sorted(t.get_text() for t in ax.texts) == ["1", "1", "1", "1", "2"]
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"


@pytest.mark.parametrize("out_channels", [6, 16])
def test_plot_filters(out_channels):
    weight = torch.randn(out_channels, 3, 3, 3)
    ax = plot_filters(weight, nrow=4)
    assert isinstance(ax, Axes) and len(ax.images) == 1
    grid = ax.images[0].get_array()
    rows = -(-out_channels // 4)
    assert grid.shape[:2] == (rows * 5 + 2, 4 * 5 + 2)
    assert 0.0 <= grid.min() and grid.max() <= 1.0
    assert "filters" in ax.get_title()
