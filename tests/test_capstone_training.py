"""capstone.training: train_folder's defaults and bookkeeping, its torchrun branches,
backbone_model, check_memory and the text report.

Every test that trains calls train_folder itself, on a tiny greyscale folder (16x16 PNGs)
with the digits network, and checks it against references computed here with plain torch:
a bare AdamW loop, a bare linear-probe loop, the split, the counts. The distributed branches
run one rank of a two-process world in this process (a stand-in Dist, no process group).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tl_course.capstone.training as training
import tl_course.data
from tl_course.capstone import (
    DIGITS,
    SCRATCH,
    FolderError,
    scan_folder,
    stratified_split,
    train_folder,
)
from tl_course.capstone.training import TrainResult, backbone_model, check_memory
from tl_course.data import DigitsData
from tl_course.distributed import Dist, DistributedError
from tl_course.models import DigitCNN, weights_file
from tl_course.profile import get_profile

CPU = torch.device("cpu")
CLASSES = ("ant", "bee", "cat")
BAR = re.compile(r"\d+%\|")  # a tqdm progress bar on stderr


# ----------------------------------------------------------------- helpers


def write_folder(root: Path, per_class: int = 5, size: int = 16, broken: bool = False) -> Path:
    """`per_class` greyscale size x size PNGs per class (class k a little brighter than
    k - 1, plus noise), in ImageFolder layout; `broken`: one undecodable .png as well."""
    rng = np.random.default_rng(0)
    for k, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            noise = rng.integers(-40, 40, (size, size))
            Image.fromarray(np.clip(60 + 60 * k + noise, 0, 255).astype(np.uint8)).save(
                root / c / f"{c}_{i}.png")
    if broken:
        (root / CLASSES[0] / "broken.png").write_bytes(b"not a png at all")
    return root


def pixels(paths: list[Path]) -> torch.Tensor:
    """(N, 1, S, S) float32 in [0, 1]: the digits preprocessing of greyscale PNGs."""
    return torch.stack([torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32) / 255.0)
                        for p in paths])[:, None]


def labels_of(paths: list[Path]) -> torch.Tensor:
    return torch.tensor([CLASSES.index(p.parent.name) for p in paths])


def bare_adamw(x: torch.Tensor, y: torch.Tensor, model: nn.Module, seed: int, epochs: int,
               batch_size: int, lr: float, weight_decay: float = 1e-4) -> nn.Module:
    """Plain training: AdamW on every parameter, cross-entropy, a DataLoader shuffled by a
    generator seeded with `seed`."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    model.train()
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model.eval()


def assert_same_state(state: dict, reference: dict, skip: str = "\0") -> None:
    keys = [k for k in reference if not k.startswith(skip)]
    assert [k for k in state if not k.startswith(skip)] == keys
    for k in keys:
        assert torch.allclose(state[k].float(), reference[k].float(), rtol=0, atol=1e-6), k


@pytest.fixture
def fake_mnist_digits(monkeypatch):
    """load_digits stood in for by 30 random digits 0-9 (the real one reads the 5,000-digit
    sample, seconds); returns the list of (name, profile) it was called with."""
    calls: list = []

    def load_digits(name, profile, root=None):
        calls.append((name, profile))
        gen = torch.Generator().manual_seed(11)
        x = torch.rand(30, 1, 28, 28, generator=gen)
        y = torch.arange(30) % 10
        return DigitsData("mnist", TensorDataset(x, y), TensorDataset(x[:10], y[:10]), "fake")

    monkeypatch.setattr(tl_course.data, "load_digits", load_digits)
    return calls


def source_checkpoint(data_root: Path) -> dict:
    """The one cached digits source model (load-or-train writes it under models/)."""
    files = sorted((data_root / "models").glob("digitcnn_src0-4_*.pt"))
    assert len(files) == 1, files
    return torch.load(files[0], map_location="cpu", weights_only=True)


# ----------------------------------------------------------------- train_folder, one process


def test_scratch_finetune_defaults_equal_a_bare_adamw_loop(tmp_path, monkeypatch, capsys):
    """Defaults (finetune, valid_pct 0.2, seed 0, epochs for about 10 smoke steps, a batch
    of a quarter of the training images but at least 8): the digits-scratch export is a
    seeded DigitCNN trained by plain AdamW (lr 2e-3, weight decay 1e-4) on exactly the
    split's training images, reproduced by a bare loop; split.json, model.json, the
    TrainResult, the timing (to 0.1 s) and the report agree with it."""
    folder = write_folder(tmp_path / "imgs", broken=True)
    clock = iter([100.0, 101.26])  # the two readings around training
    monkeypatch.setattr(training, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    out = tmp_path / "not" / "yet" / "there"
    result = train_folder(folder, out, backbone=SCRATCH, image_size=16, profile="smoke",
                          device=CPU, progress=False)
    assert not BAR.search(capsys.readouterr().err)  # progress=False: no bar

    scan = scan_folder(folder)
    train_idx, val_idx = stratified_split(scan.labels, 0.2, 0)
    rel = [str(p.relative_to(folder)) for p in scan.paths]
    split = json.loads((out / "split.json").read_text())
    assert split == {"seed": 0, "valid_pct": 0.2, "classes": list(CLASSES),
                     "train": [rel[i] for i in train_idx], "valid": [rel[i] for i in val_idx]}
    train_paths = [folder / p for p in split["train"]]
    val_paths = [folder / p for p in split["valid"]]
    assert len(train_paths) == 12 and len(val_paths) == 3  # 5 per class: 4 + 1
    # A quarter of 12 is 3, below the floor of 8; 12 / 8 -> 2 steps per epoch, so 10 smoke
    # steps take 5 epochs (more than the smoke profile's 2).
    batch, epochs = 8, 5
    torch.manual_seed(0)
    reference = bare_adamw(pixels(train_paths), labels_of(train_paths), DigitCNN(num_classes=3),
                           seed=0, epochs=epochs, batch_size=batch, lr=2e-3)
    assert_same_state(torch.load(out / "model.pt", weights_only=True), reference.state_dict())

    meta = json.loads((out / "model.json").read_text())
    assert meta["backbone"] == SCRATCH and meta["mode"] == "finetune"
    assert meta["preprocess"] == {"channels": 1, "image_size": 16, "mean": [0.0], "std": [1.0]}
    assert meta["parameters"] == sum(p.numel() for p in reference.parameters())
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["split"] == {"seed": 0, "valid_pct": 0.2, "file": "split.json"}
    assert (meta["epochs"], meta["batch_size"], meta["processes"]) == (epochs, batch, 1)
    assert meta["skipped"] == [str(folder / "ant" / "broken.png")]

    with torch.no_grad():
        pred = reference(pixels(val_paths)).argmax(1)
    true = labels_of(val_paths)
    assert result.out == out and result.classes == list(CLASSES)
    assert result.val_paths == val_paths
    assert torch.equal(result.val_true, true) and torch.equal(result.val_pred, pred)
    m = result.metrics
    assert m["val_images"] == 3
    assert m["val_accuracy"] == pytest.approx((pred == true).double().mean().item())
    assert m["train_seconds"] == 1.3  # 101.26 - 100.0, to 0.1 s
    assert meta["metrics"] == m
    last = result.report().splitlines()[-1]
    assert last == f"exported to {out / 'model.pt'} and {out / 'model.json'}"
    assert (out / "model.pt").is_file() and (out / "model.json").is_file()


def test_digits_probe_is_the_source_body_with_a_bare_probe_head(tmp_path, data_root,
                                                                  fake_mnist_digits, capsys):
    """backbone "digits", probe mode, a Profile object, seed 3, into an existing folder:
    the source model (notebook 02's, trained once on MNIST digits 0-4 with the run's
    profile and cached) is the exported body unchanged, and the head is a linear layer
    trained on its features by a bare AdamW loop (lr 1e-2, seed 3); the split is seed 3's."""
    smoke = get_profile("smoke")
    folder = write_folder(tmp_path / "imgs")
    out = tmp_path / "out"
    out.mkdir()  # an existing output folder is fine
    result = train_folder(folder, out, backbone=DIGITS, mode="probe", valid_pct=0.4, seed=3,
                          epochs=2, image_size=16, profile=smoke, device=CPU, progress=False)
    assert fake_mnist_digits == [("mnist", smoke)]
    assert not BAR.search(capsys.readouterr().err)

    scan = scan_folder(folder)
    _, val_idx = stratified_split(scan.labels, 0.4, 3)
    assert val_idx != stratified_split(scan.labels, 0.4, 0)[1]  # the seed matters here
    split = json.loads((out / "split.json").read_text())
    assert split["valid"] == [str(scan.paths[i].relative_to(folder)) for i in val_idx]
    assert result.val_paths == [scan.paths[i] for i in val_idx]

    exported = torch.load(out / "model.pt", weights_only=True)
    source = source_checkpoint(data_root)
    assert_same_state(exported, source, skip="head")
    body = DigitCNN(num_classes=5)
    body.load_state_dict(source)
    train_paths = [folder / p for p in split["train"]]
    with torch.no_grad():
        feats = body.eval().features(pixels(train_paths))
    torch.manual_seed(3)
    head = bare_adamw(feats, labels_of(train_paths), nn.Linear(feats.shape[1], 3), seed=3,
                      epochs=2, batch_size=256, lr=1e-2)
    assert torch.allclose(exported["head.1.weight"], head.weight, atol=1e-6)
    assert torch.allclose(exported["head.1.bias"], head.bias, atol=1e-6)
    meta = json.loads((out / "model.json").read_text())
    assert meta["mode"] == "probe" and meta["split"]["seed"] == 3


def test_digits_finetune_runs_the_03_recipe_with_a_quarter_batch(tmp_path, monkeypatch,
                                                                  fake_mnist_digits):
    """A pretrained backbone in finetune mode goes through transfer.fine_tune (head first
    for one epoch, then everything for epochs - 1), on batches of a quarter of the
    training images once that is over 8 (42 // 4 = 10)."""
    import tl_course.transfer

    calls: list = []
    real = tl_course.transfer.fine_tune

    def spy(model, loader, val_loader, device, epochs, head_epochs=1, **kwargs):
        calls.append((loader.batch_size, epochs, head_epochs))
        return real(model, loader, val_loader, device, epochs, head_epochs, **kwargs)

    monkeypatch.setattr(tl_course.transfer, "fine_tune", spy)
    folder = write_folder(tmp_path / "imgs", per_class=17, size=8)  # 3 x (14 + 3)
    out = tmp_path / "out"
    train_folder(folder, out, backbone=DIGITS, image_size=8, epochs=2, profile="smoke",
                 device=CPU, progress=False)
    assert calls == [(10, 1, 1)]
    meta = json.loads((out / "model.json").read_text())
    assert (meta["batch_size"], meta["epochs"]) == (10, 2)


@pytest.mark.parametrize("mode, profile, progress, epochs", [
    ("probe", "smoke", True, 10),  # 6 training images: 1 step per epoch, 10 smoke steps
    ("finetune", "cpu", None, 8),  # the cpu profile shows bars; MIN_STEPS (8 here) steps
])
def test_progress_bar_and_epochs_follow_the_argument_or_the_profile(
        tmp_path, monkeypatch, capsys, mode, profile, progress, epochs):
    """progress=True shows a bar whatever the profile; progress=None takes the profile's
    setting (the cpu profile shows one). Without --epochs, training lasts about 10 steps
    on the smoke profile and MIN_STEPS on the others (at least the profile's epochs)."""
    monkeypatch.setattr(training, "MIN_STEPS", 8)
    folder = write_folder(tmp_path / "imgs", per_class=3)
    out = tmp_path / "out"
    train_folder(folder, out, backbone=SCRATCH, mode=mode, profile=profile, device=CPU,
                 progress=progress)
    assert BAR.search(capsys.readouterr().err)
    assert json.loads((out / "model.json").read_text())["epochs"] == epochs


# ----------------------------------------------------------------- train_folder under torchrun


class _Logged(nn.Module):
    """What DDP's wrapper would be: the same model; logs each per-process batch size."""

    def __init__(self, model: nn.Module, log: list) -> None:
        super().__init__()
        self.model, self.log = model, log

    def forward(self, x):
        self.log.append(("batch", len(x)))
        return self.model(x)


@dataclass(frozen=True)
class OneRankOfTwo(Dist):
    """Rank `rank` of a two-process run, simulated in this process without a process group.

    Barriers are logged; the other process is a mirror for sums (all-reduce doubles) and
    sends zero logits for its share of the validation set (see gathered)."""

    log: list = field(default_factory=list, compare=False, hash=False)

    def barrier(self) -> None:
        self.log.append("barrier")

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t.mul_(2)

    def wrap(self, model: nn.Module) -> nn.Module:
        return _Logged(model, self.log)


def gathered(n: int):
    """gather_objects for OneRankOfTwo: this rank's (indices, logits) and the other's."""
    def gather(obj, d):
        idx, logits = obj
        if not d.active:
            return [obj]
        other = [i for i in range(n) if i not in idx]
        theirs = (other, torch.zeros(len(other), logits.shape[1]))
        return [obj, theirs] if d.rank == 0 else [theirs, obj]

    return gather


def _run_rank(tmp_path, monkeypatch, rank: int, progress: bool):
    folder = write_folder(tmp_path / "imgs")  # 12 training images, 3 validation images
    d = OneRankOfTwo(rank=rank, world_size=2, device=CPU, backend="gloo")
    models: list = []
    real = training.backbone_model

    def backbone(*args):
        d.log.append("backbone")
        models.append(real(*args))
        return models[-1]

    monkeypatch.setattr(training, "backbone_model", backbone)
    monkeypatch.setattr(training, "gather_objects", gathered(3))
    out = tmp_path / "out"
    result = train_folder(folder, out, backbone=SCRATCH, epochs=1, profile="smoke",
                          progress=progress, dist=d)
    scan = scan_folder(folder)
    _, val_idx = stratified_split(scan.labels, 0.2, 0)
    val_paths = [scan.paths[i] for i in val_idx]
    with torch.no_grad():
        pred = models[0].eval()(pixels(val_paths)).argmax(1)
    return d.log, result, out, pred, labels_of(val_paths)


def _confusion(true, pred) -> list:
    cm = np.zeros((len(CLASSES), len(CLASSES)), int)
    for t, p in zip(true.tolist(), pred.tolist(), strict=True):
        cm[t, p] += 1
    return cm.tolist()


def test_rank_0_of_two_builds_first_splits_batches_and_sums_counts(tmp_path, monkeypatch,
                                                                   capsys):
    """Rank 0 of two: builds the model (fills the caches) before the first barrier, says
    the global batch (8 = 2 x 4 per process, learning rates unscaled), trains on its half
    of the training set in batches of 4 through the DDP wrapper, predicts its share of the
    validation set (indices 0, 2), reads every metric off the all-reduced counts, puts the
    logits back in order and records batch 8 and 2 processes in model.json."""
    log, result, out, pred, true = _run_rank(tmp_path, monkeypatch, 0, progress=False)
    assert [e for e in log if isinstance(e, str)] == ["backbone", "barrier", "barrier"]
    assert [n for e, n in (e for e in log if isinstance(e, tuple))] == [4, 2]
    said = capsys.readouterr().out
    assert "torchrun: 2 processes (gloo on cpu); global batch 8 = 2 x 4 per process" in said
    assert "learning rates as for one process at that batch (nothing is scaled)" in said
    mine = [0, 2]
    m = result.metrics
    assert m["confusion_matrix"] == [[2 * n for n in row]
                                     for row in _confusion(true[mine], pred[mine])]
    assert m["val_images"] == 4  # 2 of mine + the mirror's 2
    assert result.val_pred.tolist() == [pred[0], 0, pred[2]]  # the other rank sent zeros
    meta = json.loads((out / "model.json").read_text())
    assert (meta["batch_size"], meta["processes"]) == (8, 2)


def test_rank_1_of_two_waits_for_the_caches_and_stays_quiet(tmp_path, monkeypatch, capsys):
    """Rank 1 of two: waits at a barrier before building the model (rank 0 fills the
    caches), meets no second barrier before training, prints nothing, shows no bar even
    with progress=True, writes nothing, and still trains on its half in batches of 4."""
    log, result, out, pred, _ = _run_rank(tmp_path, monkeypatch, 1, progress=True)
    assert [e for e in log if isinstance(e, str)] == ["barrier", "backbone", "barrier"]
    assert [n for e, n in (e for e in log if isinstance(e, tuple))] == [4, 2]
    captured = capsys.readouterr()
    assert captured.out == "" and not BAR.search(captured.err)
    assert not out.exists()
    assert result.val_pred.tolist() == [0, pred[1], 0]


def test_probe_mode_is_refused_under_torchrun_before_anything_happens(tmp_path):
    """--mode probe with several processes: DistributedError, nothing read or written."""
    with pytest.raises(DistributedError, match="probe"):
        train_folder(tmp_path / "missing", tmp_path / "out", mode="probe", profile="smoke",
                     dist=OneRankOfTwo(rank=0, world_size=2))
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- backbone_model


def test_scratch_backbone_is_a_seeded_fresh_digitcnn_on_the_device():
    """digits-scratch: DigitCNN(num_classes) at the seed's random initialisation, on the
    requested device."""
    smoke = get_profile("smoke")
    model = backbone_model(SCRATCH, 4, smoke, CPU, 5)
    torch.manual_seed(5)
    assert_same_state(model.state_dict(), DigitCNN(num_classes=4).state_dict())
    other = backbone_model(SCRATCH, 4, smoke, CPU, 6)
    assert not torch.equal(other.head[1].weight, model.head[1].weight)
    on_meta = backbone_model(SCRATCH, 4, smoke, torch.device("meta"), 5)
    assert {p.device.type for p in on_meta.parameters()} == {"meta"}


def test_digits_backbone_is_the_cached_source_model_with_a_seeded_head(data_root,
                                                                      fake_mnist_digits):
    """digits: the source model trained on digits 0-4 for the given profile (then loaded
    from its cache) as the body, and a fresh head for num_classes drawn from the seed,
    whether the source was just trained or loaded."""
    smoke = get_profile("smoke")
    for seed in (7, 8):  # trains and caches, then loads
        model = backbone_model(DIGITS, 3, smoke, CPU, seed)
        source = source_checkpoint(data_root)
        assert_same_state(model.state_dict(), source, skip="head")
        torch.manual_seed(seed)
        head = nn.Linear(model.head[1].in_features, 3)
        assert torch.equal(model.head[1].weight, head.weight)
        assert torch.equal(model.head[1].bias, head.bias)
    assert fake_mnist_digits == [("mnist", smoke)] * 2


def test_imagenet_backbone_lands_on_the_requested_device():
    """An ImageNet backbone (cached weights, offline) is moved to the device asked for."""
    import torchvision

    path = weights_file("mobilenet_v3_small")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)
    model = backbone_model("mobilenet_v3_small", 3, get_profile("smoke"), torch.device("meta"),
                           0)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert model.head[1].out_features == 3


# ----------------------------------------------------------------- check_memory


def test_check_memory_counts_float32_bytes_against_the_limit():
    """n x channels x size^2 x 4 bytes, in GB of 1e9 bytes: exactly at the limit passes,
    a byte over fails."""
    prep = {"channels": 1, "image_size": 1000}
    check_memory(1000, prep)  # 1000 x 1 x 1000^2 x 4 = 4e9 bytes: the default 4 GB limit
    check_memory(1000, {"channels": 3, "image_size": 224}, limit_gb=0.602112)  # 602,112,000 B
    with pytest.raises(FolderError):
        check_memory(1000, prep, limit_gb=3.999999998)  # 4e9 bytes are 4.0 GB, not 3.999999996
    with pytest.raises(FolderError):
        check_memory(1001, prep)


@pytest.mark.parametrize("n, prep, limit, message", [
    # 4000 x 3 x 224^2 x 4 B = 2.408 GB; 224 x sqrt(0.7 / 2.408) = 120.8
    (4000, {"channels": 3, "image_size": 224}, 0.7,
     "4000 images at 224 px need about 2.4 GB in memory (limit 0.7 GB): use --image-size "
     "120 or fewer images"),
    # 1e6 x 3 x 64^2 x 4 B = 49.2 GB; 64 x sqrt(4 / 49.152) = 18.3, below the floor of 32
    (1_000_000, {"channels": 3, "image_size": 64}, 4.0,
     "1000000 images at 64 px need about 49.2 GB in memory (limit 4 GB): use --image-size "
     "32 or fewer images"),
])
def test_check_memory_suggests_the_largest_size_that_fits(n, prep, limit, message):
    """Over the limit: FolderError with the estimate and an --image-size that fits (the
    side shrinks by sqrt(limit / size), as memory grows with its square), at least 32."""
    with pytest.raises(FolderError) as err:
        check_memory(n, prep, limit_gb=limit)
    assert str(err.value) == message


# ----------------------------------------------------------------- the report


def test_report_text(tmp_path):
    """TrainResult.report: accuracy with the baselines, per-class accuracy, the confusion
    matrix one row per true class, and the two export files, one item per line."""
    metrics = {"val_accuracy": 5 / 6, "majority_baseline": 4 / 6, "balanced_accuracy": 0.875,
               "per_class_accuracy": {"cat": 0.75, "dog": 1.0},
               "confusion_matrix": [[3, 1], [0, 12]]}
    result = TrainResult(tmp_path / "m", ["cat", "dog"], metrics, torch.zeros(0),
                         torch.zeros(0))
    assert result.report() == "\n".join([
        "validation accuracy 0.833 (majority-class baseline 0.667, balanced accuracy 0.875)",
        "  cat" + " " * 18 + "0.750",  # names padded to 20 columns
        "  dog" + " " * 18 + "1.000",
        "confusion matrix (rows: true class, columns: predicted, in that order):",
        "     3    1",  # 4 columns per count
        "     0   12",
        f"exported to {tmp_path / 'm' / 'model.pt'} and {tmp_path / 'm' / 'model.json'}",
    ])
