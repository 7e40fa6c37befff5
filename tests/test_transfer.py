import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tl_course.data import DigitsData
from tl_course.models import DigitCNN, trainable_blocks
from tl_course.profile import PROFILES
from tl_course.train import History
from tl_course.transfer import (
    digit_split,
    fine_tune,
    gradual_unfreeze,
    label_efficiency,
    results_table,
    scramble_pixels,
    source_model,
    steps_to_epochs,
    summarise,
)

SMOKE = PROFILES["smoke"]


def _indexed(n: int) -> TensorDataset:
    """n 'images' whose first pixel is their index; labels 0..9 in turn."""
    x = torch.zeros(n, 1, 28, 28)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)
    return TensorDataset(x, torch.arange(n) % 10)


def _random_digits(n_train: int, n_test: int, classes: int = 5, seed: int = 0) -> DigitsData:
    gen = torch.Generator().manual_seed(seed)
    make = lambda n: TensorDataset(torch.rand(n, 1, 28, 28, generator=gen),
                                   torch.arange(n) % classes)
    return DigitsData("synthetic", make(n_train), make(n_test), "synthetic test digits")


def _tiny_loader(n: int = 10, classes: int = 5) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.rand(n, 1, 28, 28, generator=gen), torch.arange(n) % classes)
    return DataLoader(ds, batch_size=n)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------- digit_split


def test_digit_split_labels():
    digits = DigitsData("toy", _indexed(40), _indexed(20), "made up", notice="a notice")
    source, target = digit_split(digits)
    for part, full in (("train", digits.train), ("test", digits.test)):
        orig_y = full.tensors[1]
        src = getattr(source, part)
        tgt = getattr(target, part)
        # Source: exactly the 0-4 examples, labels unchanged.
        src_idx = src.tensors[0][:, 0, 0, 0].long()
        assert set(src.tensors[1].tolist()) == {0, 1, 2, 3, 4}
        assert torch.equal(src.tensors[1], orig_y[src_idx])
        assert len(src) == int((orig_y < 5).sum())
        # Target: exactly the 5-9 examples, relabelled 0-4.
        tgt_idx = tgt.tensors[0][:, 0, 0, 0].long()
        assert set(tgt.tensors[1].tolist()) == {0, 1, 2, 3, 4}
        assert (orig_y[tgt_idx] >= 5).all()
        assert torch.equal(tgt.tensors[1], orig_y[tgt_idx] - 5)
        assert len(tgt) == int((orig_y >= 5).sum())
    assert source.name != target.name
    assert source.source == target.source == "made up"


# ----------------------------------------------------------------- steps_to_epochs


@pytest.mark.parametrize(
    ("n", "batch", "steps", "epochs"),
    [(100, 32, 40, 10), (64, 64, 10, 10), (10, 32, 5, 5), (100, 32, 1, 1), (100, 10, 3, 1),
     (1000, 10, 260, 3), (100, 32, 0, 1)],
)
def test_steps_to_epochs(n, batch, steps, epochs):
    assert steps_to_epochs(n, batch, steps) == epochs


def test_steps_to_epochs_gives_about_the_steps():
    for n, batch, steps in [(500, 64, 100), (123, 7, 50), (4000, 128, 400)]:
        epochs = steps_to_epochs(n, batch, steps)
        per_epoch = math.ceil(n / batch)
        assert abs(epochs * per_epoch - steps) <= per_epoch / 2


# ----------------------------------------------------------------- scramble_pixels


def test_scramble_pixels_is_one_fixed_permutation():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 28, 28, generator=gen)
    x[0] = torch.arange(28 * 28, dtype=torch.float32).reshape(1, 28, 28)  # reveals the perm
    y = torch.tensor([3, 1, 4, 1, 5])
    original = x.clone()
    out = scramble_pixels(TensorDataset(x, y), seed=0)
    sx, sy = out.tensors
    assert sx.shape == x.shape
    assert torch.equal(sy, y)
    assert torch.equal(x, original)  # input untouched
    perm = sx[0].flatten().long()
    assert sorted(perm.tolist()) == list(range(28 * 28))
    assert not torch.equal(perm, torch.arange(28 * 28))
    for i in range(5):
        assert torch.equal(torch.sort(sx[i].flatten()).values, torch.sort(x[i].flatten()).values)
        assert torch.equal(sx[i].flatten(), x[i].flatten()[perm])
    again = scramble_pixels(TensorDataset(x, y), seed=0).tensors[0]
    assert torch.equal(again, sx)
    other = scramble_pixels(TensorDataset(x, y), seed=1).tensors[0]
    assert not torch.equal(other, sx)


# ----------------------------------------------------------------- source_model


def test_source_model_trains_once_then_loads(cpu, tmp_path, capsys):
    source = _random_digits(50, 20)
    first = source_model(SMOKE, cpu, source, root=tmp_path)
    out = capsys.readouterr().out
    assert "trained" in out and "loaded" not in out
    files = list((tmp_path / "models").iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"
    assert torch.load(files[0], weights_only=True).keys() == first.state_dict().keys()
    assert isinstance(first, DigitCNN) and first.head[-1].out_features == 5

    second = source_model(SMOKE, cpu, source, root=tmp_path)
    out = capsys.readouterr().out
    assert "loaded" in out and "trained" not in out
    assert _same_state(_state(first), _state(second))
    torch.manual_seed(0)
    assert not _same_state(_state(first), _state(DigitCNN(num_classes=5)))  # really trained

    scrambled = source_model(SMOKE, cpu, source, root=tmp_path, scrambled=True)
    assert "trained" in capsys.readouterr().out  # not the unscrambled file
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert len(names) == 2 and files[0].name in names
    assert not _same_state(_state(first), _state(scrambled))
    source_model(SMOKE, cpu, source, root=tmp_path, scrambled=True)
    assert "loaded" in capsys.readouterr().out


def test_source_model_defaults_to_the_data_cache(cpu, data_root, capsys):
    source_model(SMOKE, cpu, _random_digits(20, 10))
    assert len(list((data_root / "models").glob("*.pt"))) == 1
    assert capsys.readouterr().err == ""  # the smoke profile shows no progress bar


# ----------------------------------------------------------------- fine_tune / gradual_unfreeze


def test_fine_tune_ends_fully_trainable(cpu):
    torch.manual_seed(0)
    model = DigitCNN(num_classes=5, width=4)
    before = _state(model)
    history = fine_tune(model, _tiny_loader(), _tiny_loader(), cpu, epochs=2, head_epochs=1)
    assert isinstance(history, History)
    assert history.epochs == 3 and len(history["val_loss"]) == 3
    assert trainable_blocks(model) == model.block_names
    assert all(p.requires_grad for p in model.parameters())
    assert model.frozen_bn == set()
    # The body moved in the fine-tune phase.
    w = model.blocks["block1"][0].weight
    assert not torch.equal(w, before["blocks.block1.0.weight"])


def test_gradual_unfreeze_stages(cpu):
    torch.manual_seed(0)
    model = DigitCNN(num_classes=5, width=4)
    history = gradual_unfreeze(model, _tiny_loader(), None, cpu, epochs_per_stage=2)
    assert history.epochs == (len(model.block_names) + 1) * 2
    assert trainable_blocks(model) == model.block_names
    assert all(p.requires_grad for p in model.parameters())


# ----------------------------------------------------------------- label_efficiency


def test_label_efficiency_shape_and_range(cpu):
    torch.manual_seed(0)
    source = DigitCNN(num_classes=5, width=4)
    before = _state(source)
    target = _random_digits(15, 10, seed=1)
    seen = []
    results = label_efficiency(source, target, ks=[1, 2], seeds=[0, 1], device=cpu, steps=1,
                               progress=seen.append)
    assert list(results) == ["scratch", "probe", "finetune"]
    for by_k in results.values():
        assert list(by_k) == [1, 2]
        for values in by_k.values():
            assert len(values) == 2
            assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in values)
    assert len(seen) == 4
    assert _same_state(before, _state(source))  # fine-tuning works on a copy


def test_label_efficiency_one_method(cpu):
    source = DigitCNN(num_classes=5, width=4)
    results = label_efficiency(source, _random_digits(10, 10), ks=[1], seeds=[0], device=cpu,
                               steps=1, methods=("probe",))
    assert list(results) == ["probe"] and len(results["probe"][1]) == 1


def test_label_efficiency_rejects_unknown_methods(cpu):
    with pytest.raises(ValueError, match="magic"):
        label_efficiency(DigitCNN(num_classes=5, width=4), _random_digits(10, 10), ks=[1],
                         seeds=[0], device=cpu, steps=1, methods=("scratch", "magic"))


# ----------------------------------------------------------------- summarise / results_table

RESULTS = {
    "scratch": {1: [0.2, 0.4, 0.6], 5: [0.5]},
    "finetune": {1: [0.7, 0.9], 5: [0.8, 0.8]},
}


def test_summarise_mean_and_sample_std():
    summary = summarise(RESULTS)
    assert list(summary) == ["scratch", "finetune"]
    mean, std = summary["scratch"][1]
    assert mean == pytest.approx(0.4) and std == pytest.approx(0.2)  # ddof=1
    assert summary["scratch"][5] == (pytest.approx(0.5), 0.0)  # one seed: no spread
    mean, std = summary["finetune"][1]
    assert mean == pytest.approx(0.8) and std == pytest.approx(math.sqrt(0.02))
    assert summary["finetune"][5] == (pytest.approx(0.8), pytest.approx(0.0))


def test_results_table():
    lines = results_table(RESULTS).splitlines()
    assert lines[0].replace(" ", "") == "|labelsperclass|scratch|finetune|"
    assert lines[1] == "|---|---|---|"
    assert lines[2] == "| 1 | 0.400 ± 0.200 | 0.800 ± 0.141 |"
    assert lines[3] == "| 5 | 0.500 ± 0.000 | 0.800 ± 0.000 |"
    assert len(lines) == 4


# ----------------------------------------------------------------- baselines any transfer must beat


def _separable_digits(n_train: int, n_test: int, seed: int = 0) -> DigitsData:
    """5 classes whose class lights one pixel row: raw pixels separate them perfectly."""
    gen = torch.Generator().manual_seed(seed)

    def make(n: int) -> TensorDataset:
        y = torch.arange(n) % 5
        x = 0.1 * torch.rand(n, 1, 28, 28, generator=gen)
        x[torch.arange(n), 0, 4 * y + 2, :] = 1.0
        return TensorDataset(x, y)

    return DigitsData("separable", make(n_train), make(n_test), "synthetic test digits")


def test_pixels_probe_is_logistic_regression_on_raw_pixels(cpu):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    target = _random_digits(40, 30, seed=3)
    results = label_efficiency(DigitCNN(num_classes=5, width=4), target, ks=[3], seeds=[0],
                               device=cpu, steps=1, methods=("pixels",))
    # Reference computed here: the same 3 per class, the same standardised logistic regression.
    from tl_course.data import per_class_subset

    train = per_class_subset(target.train, 3, seed=0)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(train.tensors[0].flatten(1).numpy(), train.tensors[1].numpy())
    expected = clf.score(target.test.tensors[0].flatten(1).numpy(), target.test.tensors[1].numpy())
    assert results["pixels"][3] == [pytest.approx(expected)]


def test_random_probe_ignores_the_source_and_is_seeded(cpu):
    target = _separable_digits(30, 20)
    a, b = (DigitCNN(num_classes=5, width=4) for _ in range(2))
    with torch.no_grad():
        b.blocks["block1"][0].weight.mul_(-3.0)  # a different source must not matter
    run = lambda src: label_efficiency(src, target, ks=[2], seeds=[0, 1], device=cpu, steps=1,
                                       methods=("random_probe",))["random_probe"][2]
    first = run(a)
    assert first == run(b)  # the source model plays no part in the random-init baseline
    assert all(0.0 <= v <= 1.0 for v in first)


def test_scratch_lr_reaches_train_scratch(cpu, monkeypatch):
    import tl_course.transfer as transfer

    seen = []
    real = transfer.train_scratch
    monkeypatch.setattr(transfer, "train_scratch",
                        lambda *a, **kw: seen.append(kw.get("lr")) or real(*a, **kw))
    label_efficiency(DigitCNN(num_classes=5, width=4), _random_digits(10, 10), ks=[1],
                     seeds=[0], device=cpu, steps=1, methods=("scratch",), scratch_lr=0.0123)
    assert seen == [0.0123]


def test_tune_scratch_lr_picks_the_best_on_validation(cpu, monkeypatch):
    import tl_course.transfer as transfer

    target = _separable_digits(30, 30)
    # Fake training: the "model" of lr 3e-3 reads the class off the image, the others never.
    def fake_train(train, device, steps, seed, lr):
        return _Reader(lr == 3e-3)

    monkeypatch.setattr(transfer, "train_scratch", fake_train)
    best, scores = transfer.tune_scratch_lr(target.train, target.test, cpu, steps=1,
                                            lrs=(1e-3, 3e-3, 1e-2))
    assert best == 3e-3 and scores[3e-3] == 1.0 and scores[1e-3] < 1.0


def _row_class(x: torch.Tensor, right: bool) -> torch.Tensor:
    """The class a separable image encodes (its bright row), or a wrong constant class."""
    if not right:
        return torch.full((len(x),), 4, dtype=torch.long)
    return ((x[:, 0, :, 0].argmax(1) - 2) // 4).clamp(0, 4)


class _Reader(torch.nn.Module):
    """A fake trained model: reads the class off the image (right) or a wrong one."""

    def __init__(self, right: bool):
        super().__init__()
        self.right = right

    def forward(self, x):
        return torch.nn.functional.one_hot(_row_class(x, self.right), 5).float()



def test_train_finetune_decay_sets_uniform_or_discriminative_rates(cpu, monkeypatch):
    import tl_course.transfer as transfer

    seen = []
    real = transfer.fine_tune
    monkeypatch.setattr(transfer, "fine_tune",
                        lambda *a, **kw: seen.append(kw["decay"]) or real(*a, **kw))
    src = DigitCNN(num_classes=5, width=4)
    data = _random_digits(10, 5).train
    transfer.train_finetune(src, data, cpu, steps=1)
    transfer.train_finetune(src, data, cpu, steps=1, decay=1.0)
    assert seen == [0.3, 1.0]


# ----------------------------------------------------------------- defining properties (issue 17)


def test_fine_tune_trains_the_head_alone_then_everything_at_discriminative_rates(
        cpu, monkeypatch):
    """fastai's fine_tune: phase 1, body frozen (BatchNorm too) and only the head trained;
    phase 2, every block trainable, learning rates falling by `decay` per block."""
    import tl_course.transfer as transfer

    phases = []
    real_fit = transfer.fit

    def spy(model, *args, **kwargs):
        opt = kwargs.get("optimizer")
        phases.append({
            "trainable": trainable_blocks(model),
            "head": all(p.requires_grad for p in model.head.parameters()),
            "frozen_bn": set(model.frozen_bn),
            "lrs": None if opt is None else [(g["name"], g["lr"]) for g in opt.param_groups],
            "lr": kwargs.get("lr"),
        })
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(transfer, "fit", spy)
    torch.manual_seed(0)
    model = DigitCNN(num_classes=5, width=4)
    fine_tune(model, _tiny_loader(), None, cpu, epochs=1, head_epochs=1, lr=0.04, decay=0.25)
    assert len(phases) == 2
    head, full = phases
    assert head["trainable"] == [] and head["head"] and head["frozen_bn"] == {"block1", "block2"}
    assert head["lr"] == 0.04
    assert full["trainable"] == ["block1", "block2"] and full["frozen_bn"] == set()
    assert [n for n, _ in full["lrs"]] == ["head", "block2", "block1"]
    assert [lr for _, lr in full["lrs"]] == pytest.approx([0.02, 0.005, 0.00125])


def test_train_finetune_starts_from_a_fresh_head_sized_for_the_target(cpu):
    torch.manual_seed(0)
    source = DigitCNN(num_classes=5, width=4)
    before = _state(source)
    data = TensorDataset(torch.rand(12, 1, 28, 28), torch.arange(12) % 3)
    from tl_course.transfer import train_finetune

    model = train_finetune(source, data, cpu, steps=1, num_classes=3)
    assert model.head[-1].out_features == 3
    assert _same_state(before, _state(source))  # the source model is left as it was


# ----------------------------------------------------------------- recipes against bare references
# Each reference below is a plain torch loop written from the documented recipe; a helper
# that matches it to float precision has the documented defaults (learning rates, weight
# decay, epochs, batch size, shuffle and seed) and trains the documented parameters.


def _batches(n: int, batch_size: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed list of mini-batches (more than one) of random 28x28 images, labels 0..4."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=gen)
    y = torch.arange(n) % 5
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]


def _ref_train(model, batches, opt, epochs: int, frozen_bn=(), sched=None) -> None:
    """Plain cross-entropy epochs; BatchNorm of the `frozen_bn` blocks stays in eval mode."""
    for _ in range(epochs):
        model.train()
        for name in frozen_bn:
            for m in model.blocks[name].modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()
        for x, y in batches:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        if sched is not None:
            sched.step()


def _only(model, blocks) -> list:
    """Make exactly `blocks` and the head trainable; return the trainable parameters."""
    for name, block in model.blocks.items():
        block.requires_grad_(name in blocks)
    model.head.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def _ref_fine_tune(model, batches, head_epochs, epochs, lr, decay, wd, bn="frozen") -> None:
    """fastai's fine_tune by hand: head alone (AdamW lr), then all blocks at lr/2, lr/2*decay,
    lr/2*decay^2 from the head down."""
    head_opt = torch.optim.AdamW(_only(model, []), lr=lr, weight_decay=wd)
    frozen = model.block_names if bn == "frozen" else ()
    _ref_train(model, batches, head_opt, head_epochs, frozen_bn=frozen)
    _only(model, model.block_names)
    groups = [{"params": list(model.head.parameters()), "lr": lr / 2},
              {"params": list(model.blocks["block2"].parameters()), "lr": lr / 2 * decay},
              {"params": list(model.blocks["block1"].parameters()), "lr": lr / 2 * decay**2}]
    _ref_train(model, batches, torch.optim.AdamW(groups, weight_decay=wd), epochs)


def _close(a, b) -> bool:
    """Same keys and shapes, equal to float precision."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.allclose(sa[k].float(), sb[k].float(),
                                                      rtol=1e-5, atol=1e-7) for k in sa)


def _bars(err: str) -> list[str]:
    """The descriptions of the tqdm bars written to stderr, in order of appearance."""
    import re

    return list(dict.fromkeys(re.findall(r"\r([^\r:]*):\s+\d+%", err)))


def _twins(width: int = 4):
    import copy

    torch.manual_seed(0)
    model = DigitCNN(num_classes=5, width=width)
    return model, copy.deepcopy(model)


def test_fine_tune_defaults_match_the_bare_recipe(cpu, capsys):
    """Defaults: 1 head epoch at lr 2e-3, then AdamW at 1e-3 / 3e-4 / 9e-5, weight decay 1e-4,
    BatchNorm of the frozen body fixed; no progress bar."""
    model, ref = _twins()
    batches = _batches(12, 5)
    fine_tune(model, batches, None, cpu, epochs=1)
    _ref_fine_tune(ref, batches, head_epochs=1, epochs=1, lr=2e-3, decay=0.3, wd=1e-4)
    assert _close(model, ref)
    assert capsys.readouterr().err == ""


def test_fine_tune_passes_its_arguments_to_both_phases(cpu):
    """lr, weight_decay, decay, head_epochs and bn (BatchNorm left training in the head
    phase) reach the phases they are documented for."""
    model, ref = _twins()
    batches = _batches(12, 5)
    kw = dict(lr=0.05, decay=0.5, bn="train")
    fine_tune(model, batches, None, cpu, epochs=1, head_epochs=2, weight_decay=0.5, **kw)
    _ref_fine_tune(ref, batches, head_epochs=2, epochs=1, wd=0.5, **kw)
    assert _close(model, ref)


def test_fine_tune_shows_one_bar_per_phase(cpu, capsys):
    model, _ = _twins()
    history = fine_tune(model, _batches(8, 4), _batches(4, 4, seed=1), cpu, epochs=1,
                        progress=True)
    assert _bars(capsys.readouterr().err) == ["head", "fine-tune"]
    assert len(history["val_loss"]) == 2


def test_fine_tune_wraps_each_phase_for_ddp(cpu, capsys):
    """Under torchrun each phase wraps the model anew (DDP syncs only what was trainable when
    it wrapped), and a non-main rank shows no progress bar."""
    from tl_course.distributed import Dist

    wrapped = []

    class SpyDist(Dist):
        def wrap(self, model):
            wrapped.append(trainable_blocks(model))
            return model

    model, _ = _twins()
    fine_tune(model, _batches(8, 4), None, cpu, epochs=1, progress=True, dist=SpyDist(rank=1))
    assert wrapped == [[], ["block1", "block2"]]
    assert capsys.readouterr().err == ""


def _ref_gradual(model, batches, epochs, lr) -> None:
    """ULMFiT by hand: the head, then block2 + head, then everything; a fresh AdamW(lr) per
    stage, no weight decay, BatchNorm of still-frozen blocks in eval mode."""
    stages = [[], ["block2"], ["block1", "block2"]]
    for blocks in stages:
        opt = torch.optim.AdamW(_only(model, blocks), lr=lr, weight_decay=0.0)
        frozen = [n for n in model.block_names if n not in blocks]
        _ref_train(model, batches, opt, epochs, frozen_bn=frozen)


def test_gradual_unfreeze_default_matches_the_bare_recipe(cpu, capsys):
    model, ref = _twins()
    batches = _batches(12, 5)
    gradual_unfreeze(model, batches, None, cpu, epochs_per_stage=1)
    _ref_gradual(ref, batches, 1, lr=1e-3)
    assert _close(model, ref)
    assert capsys.readouterr().err == ""


def test_gradual_unfreeze_uses_lr_val_loader_and_progress_in_every_stage(cpu, capsys):
    model, ref = _twins()
    batches = _batches(12, 5)
    history = gradual_unfreeze(model, batches, _batches(4, 4, seed=1), cpu,
                               epochs_per_stage=1, lr=0.02, progress=True)
    _ref_gradual(ref, batches, 1, lr=0.02)
    assert _close(model, ref)
    assert len(history["val_loss"]) == history.epochs == 3
    assert _bars(capsys.readouterr().err) == ["head", "+block2", "+block1"]


def _shuffled(ds: TensorDataset, batch_size: int, seed: int) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def test_train_scratch_defaults_match_the_bare_recipe(cpu, capsys):
    """A fresh DigitCNN (seed 0, 5 classes), batches of 32 shuffled by the seed, AdamW at
    3e-3 with weight decay 1e-4, for about `steps` steps; silent."""
    from tl_course.transfer import train_scratch

    ds = _random_digits(40, 1, seed=2).train  # 2 batches of 32 per epoch
    model = train_scratch(ds, cpu, steps=4)
    torch.manual_seed(0)
    ref = DigitCNN(num_classes=5)
    opt = torch.optim.AdamW(ref.parameters(), lr=3e-3, weight_decay=1e-4)
    _ref_train(ref, _shuffled(ds, 32, seed=0), opt, epochs=2)
    assert _close(model, ref)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("steps", "head_epochs", "epochs"), [(4, 1, 1), (18, 2, 7)])
def test_train_finetune_defaults_match_the_bare_recipe(cpu, steps, head_epochs, epochs):
    """A copy with a fresh 5-class head (seed 0), batches of 32 shuffled by the seed, a
    quarter of the epochs (at least 1) on the head, the rest fine-tuning (at least 1)."""
    import copy

    from tl_course.transfer import train_finetune

    torch.manual_seed(1)
    source = DigitCNN(num_classes=5, width=4)
    ds = _random_digits(40, 1, seed=2).train  # 2 batches of 32 per epoch
    model = train_finetune(source, ds, cpu, steps=steps)
    torch.manual_seed(0)
    ref = copy.deepcopy(source).reset_head(5)
    _ref_fine_tune(ref, _shuffled(ds, 32, seed=0), head_epochs, epochs, lr=2e-3, decay=0.3,
                   wd=1e-4)
    assert _close(model, ref)


def test_source_model_recipe_and_cache_name(cpu, tmp_path, capsys):
    """Seeded DigitCNN, shuffled batches of the profile's size, AdamW 3e-3 (decay 1e-4) under a
    per-epoch one-cycle schedule for 4/3 of the profile's epochs; saved under a name that
    records the source, size, epochs and seed."""
    from dataclasses import replace

    profile = replace(SMOKE, epochs=3, batch_size=8, progress=True)  # 4 epochs, 3 batches
    source = _random_digits(20, 10)
    model = source_model(profile, cpu, source, root=tmp_path)
    assert _bars(capsys.readouterr().err) == ["source 0-4"]
    torch.manual_seed(0)
    ref = DigitCNN(num_classes=5)
    opt = torch.optim.AdamW(ref.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=4)
    _ref_train(ref, _shuffled(source.train, 8, seed=0), opt, epochs=4, sched=sched)
    assert _close(model, ref)
    files = [p.name for p in (tmp_path / "models").iterdir()]
    assert files == ["digitcnn_src0-4_sample20_e4_s0.pt"]


def test_source_model_loads_the_file_its_name_keys(tmp_path, capsys):
    """The cache key: full or sample data, the variant, size, epochs (4/3 of the profile's)
    and seed; a hit is loaded (nothing trained) and moved to the device."""
    from dataclasses import replace

    from tl_course.train import save_checkpoint

    profile = replace(SMOKE, epochs=3)
    source = DigitsData("mnist", _indexed(7), _indexed(5), "MNIST (full, from the cache)")
    cpu = torch.device("cpu")
    for name, kw in [("digitcnn_src0-4_full7_e4_s0.pt", {}),
                     ("digitcnn_scrambled_full7_e4_s2.pt", dict(seed=2, scrambled=True))]:
        torch.manual_seed(len(name))
        cached = DigitCNN(num_classes=5)
        save_checkpoint(cached, tmp_path / "models" / name)
        loaded = source_model(profile, cpu, source, root=tmp_path, **kw)
        assert "loaded" in capsys.readouterr().out
        assert _same_state(_state(cached), _state(loaded))
        on_meta = source_model(profile, torch.device("meta"), source, root=tmp_path, **kw)
        assert {p.device.type for p in on_meta.parameters()} == {"meta"}
    assert len(list((tmp_path / "models").iterdir())) == 2  # nothing trained


def test_label_efficiency_hands_each_seed_its_subset_steps_and_lr(cpu, monkeypatch):
    """Scratch and finetune train on per_class_subset(train, k, seed) for `steps` steps with
    that seed (scratch at lr 3e-3 by default); random_probe gives one value per seed."""
    import inspect

    import tl_course.transfer as transfer
    from tl_course.data import per_class_subset

    calls = []

    def spy(real):
        def run(*a, **kw):
            bound = inspect.signature(real).bind(*a, **kw)
            bound.apply_defaults()
            calls.append((real.__name__, dict(bound.arguments)))
            return real(*a, **kw)
        return run

    for name in ("train_scratch", "train_finetune"):
        monkeypatch.setattr(transfer, name, spy(getattr(transfer, name)))
    source = DigitCNN(num_classes=5, width=4)
    target = _random_digits(50, 10, seed=4)
    seen = []
    results = label_efficiency(source, target, ks=[2], seeds=[3], device=cpu, steps=2,
                               methods=("scratch", "finetune", "random_probe"),
                               progress=seen.append)
    subset = per_class_subset(target.train, 2, seed=3)
    assert [c[0] for c in calls] == ["train_scratch", "train_finetune"]
    for _, args in calls:
        assert all(torch.equal(a, b) for a, b in zip(args["train"].tensors, subset.tensors,
                                                          strict=True))
        assert (args["steps"], args["seed"]) == (2, 3)
    assert calls[0][1]["lr"] == 3e-3
    assert calls[1][1]["source"] is source
    assert len(results["random_probe"][2]) == 1
    assert len(seen) == 1 and "k=2" in seen[0] and "seed=3" in seen[0]


def test_tune_scratch_lr_averages_validation_accuracy_over_seeds(cpu, monkeypatch):
    import tl_course.transfer as transfer

    target = _separable_digits(30, 30)
    calls = []

    def fake_train(train, device, steps, seed, lr):
        calls.append((train, device, steps, seed, lr))
        return _Reader(seed == 0)  # seed 0 trains well, seed 1 does not

    monkeypatch.setattr(transfer, "train_scratch", fake_train)
    _, scores = transfer.tune_scratch_lr(target.train, target.test, cpu, steps=7, lrs=(1e-3,),
                                         seeds=(0, 1))
    wrong = (target.test.tensors[1] == 4).float().mean().item()
    assert scores == {1e-3: pytest.approx((1.0 + wrong) / 2)}
    assert calls == [(target.train, cpu, 7, 0, 1e-3), (target.train, cpu, 7, 1, 1e-3)]


def test_summarise_is_double_precision():
    import statistics

    values = [0.1, 0.7, 0.3]
    mean, std = summarise({"m": {1: values}})["m"][1]
    assert mean == pytest.approx(statistics.mean(values), rel=1e-14)
    assert std == pytest.approx(statistics.stdev(values), rel=1e-14)


def test_scramble_pixels_default_seed_and_a_single_image():
    """Seed 0 by default: the permutation torch.randperm draws from a generator seeded 0; a
    one-image dataset works too."""
    x = torch.arange(28 * 28, dtype=torch.float32).reshape(1, 1, 28, 28)
    out = scramble_pixels(TensorDataset(x, torch.tensor([7])))
    perm = torch.randperm(28 * 28, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.tensors[0].flatten(), x.flatten()[perm])


def test_digit_split_names_the_halves_and_keeps_the_notice():
    digits = DigitsData("toy", _indexed(40), _indexed(20), "made up", notice="a notice")
    source, target = digit_split(digits)
    assert (source.name, target.name) == ("toy_0-4", "toy_5-9")
    assert source.notice == target.notice == "a notice"
