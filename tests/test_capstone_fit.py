"""capstone's training steps, metrics, top-loss grid and export loading, each checked
against a bare reference written here (plain torch loops, DataLoader batches, hand-made
confusion counts) or against what a user sees (progress bars, the PNG, error messages).

Everything is tiny: 8x8 single-channel images and a 4-wide DigitCNN, a few optimiser
steps; no weights are downloaded.
"""

from __future__ import annotations

import copy
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.serialization
from PIL import Image
from test_fit_properties import _bare_loop  # the textbook loop
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tl_course.capstone.training as training
from tl_course.capstone import (
    DIGITS,
    ExportError,
    load_export,
    load_rgb,
    metrics_from,
    preprocessing,
    save_export,
    to_tensor,
)
from tl_course.distributed import Dist
from tl_course.models import DigitCNN
from tl_course.transfer import fine_tune

CPU = torch.device("cpu")
CLASSES = ["a", "b", "c"]


def _data(n: int = 16, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % 3)


def _model(seed: int = 0) -> DigitCNN:
    torch.manual_seed(seed)
    return DigitCNN(num_classes=3, width=4)


def _seeded_batches(ds: TensorDataset, batch_size: int, seed: int) -> DataLoader:
    """The documented shuffle: a DataLoader with a generator seeded by the run's seed."""
    return DataLoader(ds, batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def _assert_same_state(a: nn.Module, b: nn.Module, atol: float = 0.0) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if atol:
            assert torch.allclose(sa[k].float(), sb[k].float(), atol=atol), k
        else:
            assert torch.equal(sa[k], sb[k]), k


# ----------------------------------------------------------------- _fit_finetune / _fit_probe


@pytest.mark.parametrize("epochs", [1, 2])
def test_scratch_baseline_is_plain_adamw_over_seeded_shuffled_batches(epochs):
    """pretrained=False: every weight trained at once with AdamW(lr 2e-3, weight decay
    1e-4) for `epochs` epochs over batches shuffled by the run's seed (not the global
    generator's state): bit for bit the bare loop below."""
    train = _data()
    model = _model()
    ref = copy.deepcopy(model)
    torch.manual_seed(123)  # the global generator says something else than seed 7
    training._fit_finetune(model, train, CPU, epochs, 4, 7, False, pretrained=False)
    opt = torch.optim.AdamW(ref.parameters(), lr=2e-3, weight_decay=1e-4)
    _bare_loop(ref, _seeded_batches(train, 4, 7), opt, epochs)
    _assert_same_state(model, ref)


@pytest.mark.parametrize("epochs", [2, 3])
def test_pretrained_recipe_is_one_head_epoch_then_epochs_minus_one_unfrozen(epochs):
    """By default (a pretrained backbone) the 03 recipe: one epoch of the head alone, then
    epochs - 1 of everything, on the run's seeded shuffle: the same weights as
    transfer.fine_tune given those numbers and a seeded DataLoader."""
    train = _data()
    model = _model()
    ref = copy.deepcopy(model)
    torch.manual_seed(123)
    training._fit_finetune(model, train, CPU, epochs, 4, 7, False)
    fine_tune(ref, _seeded_batches(train, 4, 7), None, CPU, epochs=epochs - 1, head_epochs=1)
    _assert_same_state(model, ref)


def _first_of_two(seen: list[int], wraps: list[nn.Module]) -> Dist:
    """Rank 0 of a 2-process run, without a process group: wrap() stands in for DDP (and
    counts the images the wrapped model is given), the all-reduce for a partner whose
    contribution is zero."""

    class Counting(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            seen.append(len(x))
            return self.model(x)

    class FirstOfTwo(Dist):
        def wrap(self, model):
            wraps.append(model)
            return Counting(model)

        def all_reduce_sum(self, t):
            return t

        def barrier(self):
            pass

    return FirstOfTwo(rank=0, world_size=2)


@pytest.mark.parametrize("pretrained, phases", [(True, 2), (False, 1)])
def test_under_torchrun_every_phase_trains_the_wrapped_model_on_this_processs_half(
        pretrained, phases):
    """With a (2-process) dist, each training phase wraps the model for DDP anew and this
    process sees only its half of the training images in each of its 2 epochs."""
    seen: list[int] = []
    wraps: list[nn.Module] = []
    model = _model()
    train = _data(16)
    training._fit_finetune(model, train, CPU, 2, 4, 0, False, pretrained,
                           _first_of_two(seen, wraps))
    assert len(wraps) == phases and all(m is model for m in wraps)
    assert sum(seen) == 2 * len(train) // 2


@pytest.mark.parametrize("pretrained, names", [(True, ["head", "fine-tune"]),
                                               (False, ["train"])])
def test_finetune_progress_shows_one_bar_per_phase_only_when_asked(capsys, pretrained, names):
    """progress=True: a tqdm bar named after each phase on stderr; progress=False: none."""
    training._fit_finetune(_model(), _data(), CPU, 2, 8, 0, False, pretrained)
    assert capsys.readouterr().err == ""
    training._fit_finetune(_model(), _data(), CPU, 2, 8, 0, True, pretrained)
    err = capsys.readouterr().err
    for name in names:
        assert f"\r{name}: " in err


def test_probe_trains_a_seeded_linear_head_on_the_frozen_features():
    """Probe: the body is left as it is; the head equals a bare AdamW(lr 1e-2, weight decay
    1e-4) logistic regression on the body's eval-mode features, initialised and shuffled
    from the run's seed (not seed 0, not the global generator)."""
    train = _data()
    model = _model()
    body = copy.deepcopy(model)
    torch.manual_seed(123)
    training._fit_probe(model, train, CPU, 3, 4, 5, False)
    with torch.no_grad():
        feats = body.eval().features(train.tensors[0]).flatten(1)
    torch.manual_seed(5)
    head = nn.Linear(feats.shape[1], 3)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-4)
    loader = _seeded_batches(TensorDataset(feats, train.tensors[1]), 256, 5)
    for _ in range(3):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(head(x), y).backward()
            opt.step()
    _assert_same_state(model.head[1], head, atol=1e-6)
    trained = {k: v for k, v in model.state_dict().items() if not k.startswith("head")}
    for k, v in body.state_dict().items():
        if not k.startswith("head"):
            assert torch.equal(trained[k], v), k


def test_probe_progress_shows_its_bar_only_when_asked(capsys):
    """_fit_probe passes `progress` on: a 'probe' bar on stderr when True, nothing when False."""
    training._fit_probe(_model(), _data(), CPU, 2, 8, 0, False)
    assert capsys.readouterr().err == ""
    training._fit_probe(_model(), _data(), CPU, 2, 8, 0, True)
    assert "\rprobe: " in capsys.readouterr().err


# ----------------------------------------------------------------- metrics, gather_logits


def _counts(labels: torch.Tensor, preds: torch.Tensor) -> np.ndarray:
    cm = np.zeros((3, 3), dtype=np.int64)
    for t, p in zip(labels.tolist(), preds.tolist(), strict=True):
        cm[t, p] += 1
    return cm


def test_under_torchrun_metrics_are_read_off_the_summed_confusion_counts():
    """Each process has a shard of the validation set: the confusion counts are all-reduced
    (summed) and every metric comes from the sum, i.e. equals the whole set's metrics."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 3, generator=g)
    labels = torch.randint(0, 3, (20,), generator=g)
    mine, theirs = torch.arange(0, 20, 2), torch.arange(1, 20, 2)
    other = torch.as_tensor(_counts(labels[theirs], logits[theirs].argmax(1)))
    reduced: list[torch.Tensor] = []

    class FirstOfTwo(Dist):
        def all_reduce_sum(self, t):
            reduced.append(t.clone())
            return t + other

    m = metrics_from(logits[mine], labels[mine], [0, 1, 1], CLASSES,
                     FirstOfTwo(rank=0, world_size=2))
    assert len(reduced) == 1
    assert np.array_equal(reduced[0].numpy(), _counts(labels[mine], logits[mine].argmax(1)))
    cm = _counts(labels, logits.argmax(1))
    assert m["confusion_matrix"] == cm.tolist()
    assert m["val_images"] == 20
    assert m["val_accuracy"] == pytest.approx(np.trace(cm) / 20)
    assert m["majority_baseline"] == pytest.approx(cm[1].sum() / 20)
    assert m["balanced_accuracy"] == pytest.approx(np.mean(np.diag(cm) / cm.sum(1)))


def test_under_torchrun_the_counts_are_reduced_on_the_processs_device():
    """NCCL all-reduces only tensors on the process's GPU: the counts are moved there first
    (the meta device stands in for the GPU; the stand-in all-reduce refuses anything else
    and returns the whole set's counts, as the real one would)."""
    labels, logits = torch.tensor([0, 1, 2, 2]), torch.eye(3)[[0, 1, 2, 0]]
    whole = torch.as_tensor(_counts(labels, logits.argmax(1)))

    class OnAGpu(Dist):
        def all_reduce_sum(self, t):
            if t.device != self.device:
                raise RuntimeError(f"NCCL: tensor on {t.device}, not {self.device}")
            return whole.clone()

    d = OnAGpu(rank=0, world_size=2, device=torch.device("meta"))
    m = metrics_from(logits[:2], labels[:2], [2, 2, 0], CLASSES, d)
    assert m["confusion_matrix"] == whole.tolist() and m["val_accuracy"] == 0.75


def test_metrics_of_a_single_validation_image():
    """One image, predicted right: accuracy 1 and a majority baseline of 1 when its class
    is the training majority (no off-by-one in the denominators)."""
    m = metrics_from(torch.tensor([[0.0, 3.0, 0.0]]), torch.tensor([1]), [1, 1, 0], CLASSES)
    assert m["val_accuracy"] == 1.0 and m["majority_baseline"] == 1.0
    assert m["balanced_accuracy"] == pytest.approx(1 / 3)


def test_metrics_without_training_labels_still_count_every_class():
    """No training labels (a model trained elsewhere): the baseline falls back to the first
    class (zero counts for all) instead of crashing; the accuracies are unaffected."""
    m = metrics_from(torch.tensor([[0.0, 3.0, 0.0]]), torch.tensor([1]), [], CLASSES)
    assert m["majority_class"] == "a" and m["majority_baseline"] == 0.0
    assert m["val_accuracy"] == 1.0


def test_top_losses_defaults_to_the_nine_highest_losses_like_fastai():
    """top_losses(logits, labels): the 9 indices of highest cross-entropy (a 3 x 3 grid),
    highest first, the losses computed here with log-softmax by hand."""
    logits = torch.randn(12, 3, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(12) % 3
    loss = -(logits - logits.exp().sum(1, keepdim=True).log())[torch.arange(12), labels]
    order = sorted(range(12), key=lambda i: -float(loss[i]))
    assert training.top_losses(logits, labels).tolist() == order[:9]


def test_gather_logits_in_a_single_process_is_the_identity():
    """Without torchrun (no dist given), the one process's logits are the whole set's."""
    logits = torch.randn(5, 3)
    assert torch.equal(training.gather_logits(list(range(5)), logits, 5), logits)
    assert torch.equal(training.gather_logits(list(range(5)), logits, 5, Dist()), logits)


# ----------------------------------------------------------------- the top-losses grid


@pytest.fixture
def val_images(tmp_path):
    """12 distinct 8x8 RGB images; logits with 7 right and 5 wrong predictions."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        p = tmp_path / "imgs" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    logits = torch.randn(12, 3, generator=torch.Generator().manual_seed(1)) * 2
    pred = logits.argmax(1)
    labels = torch.where(torch.arange(12) < 7, pred, (pred + 1) % 3)
    out = tmp_path / "out"
    out.mkdir()
    return paths, logits, labels, out


@pytest.mark.parametrize("n", [None, 4, 3])
def test_top_losses_grid_shows_the_highest_loss_images_with_their_titles(
        val_images, monkeypatch, n):
    """The PNG: 3 columns of 3 x 3.2 inch panels at 90 dpi, as many rows as the n (default 9)
    highest-loss images need; each panel (axes off) shows its image with 'wrong' or
    'right ...', true and predicted class and the predicted class's softmax probability.
    No warnings (e.g. softmax without an explicit dim)."""
    import matplotlib.figure

    figs = []

    class Recording(matplotlib.figure.Figure):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            figs.append(self)

    monkeypatch.setattr(matplotlib.figure, "Figure", Recording)
    paths, logits, labels, out = val_images
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if n is None:
            path = training.save_top_losses(paths, logits, labels, CLASSES, out)
        else:
            path = training.save_top_losses(paths, logits, labels, CLASSES, out, n)
    k = 9 if n is None else n
    rows = -(-k // 3)
    assert path == out / "top_losses.png"
    assert sorted(p.name for p in out.iterdir()) == ["top_losses.png"]
    with Image.open(path) as img:
        assert img.size == (round(9 * 90), round(3.2 * rows * 90))
    logp = logits - logits.exp().sum(1, keepdim=True).log()
    loss = -logp[torch.arange(12), labels]
    order = sorted(range(12), key=lambda i: -float(loss[i]))[:k]
    (fig,) = figs
    assert len(fig.axes) == 3 * rows
    assert all(not ax.axison for ax in fig.axes)
    for j, ax in enumerate(fig.axes):
        if j >= k:
            assert not ax.images and ax.get_title() == ""
            continue
        i = order[j]
        p = int(logits[i].argmax())
        verdict = "wrong" if p != int(labels[i]) else "right (fewer errors than images)"
        prob = float(logp[i, p].exp())
        assert ax.get_title() == (f"{verdict}\ntrue {CLASSES[int(labels[i])]}, "
                                  f"pred {CLASSES[p]} ({prob:.2f})")
        assert ax.title.get_fontsize() == 8
        (shown,) = ax.images
        assert np.array_equal(np.asarray(shown.get_array()), np.asarray(load_rgb(paths[i])))
    assert {ax.get_title().split("\n")[0] for ax in fig.axes[:k]} == (
        {"wrong", "right (fewer errors than images)"} if k > 5 else {"wrong"})


# ----------------------------------------------------------------- export loading


def _export(folder, model=None, prep=None):
    model = model or DigitCNN(num_classes=2)
    save_export(model, folder, {"classes": ["a", "b"], "backbone": DIGITS,
                                "preprocess": prep or preprocessing(DIGITS)})
    return folder


def test_smallest_accepted_image_size_is_8(tmp_path):
    """model.json's image_size may be 8 (the documented floor); 7 is an edited file."""
    assert load_export(_export(tmp_path / "ok", prep=preprocessing(DIGITS, 8))).meta[
        "preprocess"]["image_size"] == 8
    folder = _export(tmp_path / "bad", prep=preprocessing(DIGITS, 7))
    with pytest.raises(ExportError, match="image_size of 8 or more"):
        load_export(folder)


def test_edited_preprocess_error_names_the_json_file(tmp_path):
    """The error for a preprocess that does not fit names the model.json to look at."""
    folder = _export(tmp_path / "m", prep={**preprocessing(DIGITS), "channels": 3})
    with pytest.raises(ExportError) as err:
        load_export(folder)
    assert str(err.value).startswith(f"{folder / 'model.json'}: 'preprocess' does not fit")


def test_a_gpu_trained_export_loads_on_a_cpu(tmp_path, monkeypatch):
    """model.pt written on a GPU (its tensors tagged cuda:0) loads onto the CPU: the same
    weights, on the CPU, whether or not this machine has CUDA."""
    torch.manual_seed(0)
    model = DigitCNN(num_classes=2)
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    _export(tmp_path / "m", model)
    monkeypatch.undo()
    exported = load_export(tmp_path / "m")
    assert {p.device for p in exported.model.parameters()} == {CPU}
    _assert_same_state(exported.model, model)


def test_model_pt_with_pickled_code_is_refused_without_running_it(tmp_path, monkeypatch):
    """A model.pt that would run code when unpickled is refused (weights-only loading),
    even where the environment relaxes torch.load's default, and the code never runs."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    folder = _export(tmp_path / "m")
    torch.save({"head.1.weight": Payload()}, folder / "model.pt")
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ExportError, match="model.pt cannot be read"):
        load_export(folder)
    assert not marker.exists()


def test_a_state_dict_of_another_architecture_says_so(tmp_path):
    """A model.pt without a head.1.weight (another network's state_dict) is an ExportError
    saying the files do not belong together, not an AttributeError."""
    folder = _export(tmp_path / "m")
    torch.save(nn.Linear(3, 2).state_dict(), folder / "model.pt")
    with pytest.raises(ExportError, match="but model.pt holds another architecture: the two"):
        load_export(folder)


def test_load_export_puts_the_model_on_the_requested_device(tmp_path):
    """The model comes back on the device asked for (the meta device stands in for a GPU)."""
    meta = torch.device("meta")
    exported = load_export(_export(tmp_path / "m"), meta)
    assert exported.device == meta
    assert {p.device for p in exported.model.parameters()} == {meta}


def test_to_tensor_drops_alpha_for_rgb_backbones():
    """An RGBA image (e.g. a PNG passed to to_tensor directly) gives the normalised RGB
    channels: alpha dropped, (x / 255 - mean) / std per channel."""
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    prep = {"channels": 3, "image_size": 8, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25]}
    x = to_tensor(Image.fromarray(rgba, "RGBA"), prep)
    rgb = torch.from_numpy(rgba[..., :3].astype(np.float32) / 255).permute(2, 0, 1)
    want = (rgb - torch.tensor(prep["mean"]).view(3, 1, 1)) / torch.tensor(prep["std"]).view(
        3, 1, 1)
    assert x.shape == (3, 8, 8)
    assert torch.allclose(x, want, atol=1e-6)
