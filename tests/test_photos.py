from pathlib import Path

import pytest
import torch
from PIL import Image

import tl_course.data
from tl_course.data import DataUnavailableError
from tl_course.models import TransferModel, weights_file
from tl_course.photos import (
    STANDIN_PHOTOS,
    eurosat_cached,
    fetch_eurosat,
    load_eurosat,
    photo_task,
    standin_photos,
)
from tl_course.profile import PROFILES

SMOKE, CPU = PROFILES["smoke"], PROFILES["cpu"]
EUROSAT_CLASSES = ("AnnualCrop", "Forest", "River")


def _no_network(*args, **kwargs):
    raise AssertionError("the network must not be probed here")


@pytest.fixture
def offline(monkeypatch):
    """No network, wherever photos looks it up."""
    monkeypatch.setattr(tl_course.data, "network_available", lambda *a, **k: False)


@pytest.fixture
def no_probe(monkeypatch):
    """Any network probe fails the test."""
    monkeypatch.setattr(tl_course.data, "network_available", _no_network)


def write_fake_eurosat(root: Path, per_class: int = 4) -> Path:
    """Tiny JPEGs where torchvision's EuroSAT looks: root/eurosat/2750/<Class>/*.jpg."""
    folder = root / "eurosat" / "2750"
    for c, name in enumerate(EUROSAT_CLASSES):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            colour = (40 * c + 10 * i, 100, 200 - 30 * c)
            Image.new("RGB", (64, 64), colour).save(folder / name / f"{name}_{i + 1}.jpg")
    return folder


def place_resnet18_weights() -> dict[str, torch.Tensor]:
    """A resnet18 state_dict where torchvision's cache keeps the ImageNet weights."""
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = weights_file("resnet18")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


# ----------------------------------------------------------------- stand-in


def test_standin_photos_shapes_labels_and_determinism():
    ds, classes = standin_photos(3)
    x, y = ds.tensors
    assert classes == list(STANDIN_PHOTOS) and len(classes) == 4
    assert x.shape == (12, 3, 64, 64) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.bincount(y, minlength=4).tolist() == [3, 3, 3, 3]
    again, _ = standin_photos(3)
    assert torch.equal(again.tensors[0], x) and torch.equal(again.tensors[1], y)
    other, _ = standin_photos(3, seed=1)
    assert not torch.equal(other.tensors[0], x)
    small, _ = standin_photos(2, size=32)
    assert small.tensors[0].shape == (8, 3, 32, 32)


def test_photo_task_smoke_is_a_labelled_standin(no_probe, data_root):
    task = photo_task(SMOKE, per_class_train=3, per_class_test=10)
    assert task.status == "standin" and task.available
    assert "STAND-IN" in task.notice
    assert task.classes == list(STANDIN_PHOTOS)
    assert len(task.train) == 12 and len(task.test) == 8
    assert isinstance(task.model, TransferModel)
    assert task.model.head[-1].out_features == len(task.classes)
    x = task.train.tensors[0][:2]
    assert task.model.eval()(x).shape == (2, 4)
    assert not weights_file("resnet18").exists()  # nothing fetched, nothing cached


def test_photo_task_smoke_ignores_cached_real_data(no_probe, data_root):
    write_fake_eurosat(data_root)
    place_resnet18_weights()
    assert photo_task(SMOKE, per_class_train=2).status == "standin"


# ----------------------------------------------------------------- cpu profile, offline


def test_photo_task_offline_without_caches_is_skipped(offline, data_root):
    task = photo_task(CPU)
    assert task.status == "skipped" and not task.available
    assert task.model is None and task.train is None
    assert "`tl-course fetch resnet18`" in task.notice
    assert "`tl-course fetch eurosat`" in task.notice


def test_photo_task_offline_names_only_what_is_missing(offline, data_root):
    place_resnet18_weights()
    task = photo_task(CPU)
    assert task.status == "skipped"
    assert "tl-course fetch eurosat" in task.notice
    assert "tl-course fetch resnet18" not in task.notice


def test_photo_task_network_claimed_but_download_fails_is_skipped(
    monkeypatch, data_root, trusted_checksums,
):
    # The quick probe says yes, the weights download still fails: a skip, not an error.
    def failing_download(name):
        raise OSError("connection reset")

    monkeypatch.setattr(tl_course.data, "network_available", lambda *a, **k: True)
    monkeypatch.setattr(tl_course.models, "fetch_weights", failing_download)
    write_fake_eurosat(data_root, per_class=1)
    task = photo_task(CPU)
    assert task.status == "skipped"
    assert "connection reset" in task.notice


def test_photo_task_real_with_cached_data_and_weights(no_probe, data_root, trusted_checksums):
    write_fake_eurosat(data_root, per_class=4)
    state = place_resnet18_weights()
    task = photo_task(CPU, per_class_train=2, per_class_test=1)
    assert task.status == "real" and task.available
    assert "STAND-IN" not in task.notice
    assert task.classes == list(EUROSAT_CLASSES)
    # The real weights, loaded from the torchvision cache.
    assert torch.equal(task.model.blocks["stem"][0].weight, state["conv1.weight"])
    assert torch.equal(task.model.blocks["layer4"][1].conv2.weight, state["layer4.1.conv2.weight"])
    # The split asked for, from the fake folder, with the weights' preprocessing.
    assert len(task.train) == 6 and len(task.test) == 3
    x, y = task.train[0]
    assert x.shape == (3, 224, 224) and 0 <= y < 3


def test_load_eurosat_split_per_class_and_disjoint(data_root):
    write_fake_eurosat(data_root, per_class=5)
    train, test, classes = load_eurosat(data_root, None, per_class_train=3, per_class_test=2)
    assert classes == list(EUROSAT_CLASSES)
    targets = torch.tensor(train.dataset.targets)
    assert torch.bincount(targets[train.indices], minlength=3).tolist() == [3, 3, 3]
    assert torch.bincount(targets[test.indices], minlength=3).tolist() == [2, 2, 2]
    assert not set(train.indices) & set(test.indices)
    image, label = train[0]
    assert isinstance(image, Image.Image) and image.size == (64, 64)
    again, _, _ = load_eurosat(data_root, None, per_class_train=3, per_class_test=2)
    assert again.indices == train.indices  # deterministic for a seed
    other, _, _ = load_eurosat(data_root, None, per_class_train=3, per_class_test=2, seed=1)
    assert other.indices != train.indices


# ----------------------------------------------------------------- fetch_eurosat


def test_fetch_eurosat_offline_names_the_fix(offline, data_root):
    with pytest.raises(DataUnavailableError) as info:
        fetch_eurosat(data_root)
    msg = str(info.value)
    assert "tl-course fetch eurosat" in msg and "no network" in msg
    assert not eurosat_cached(data_root)


def test_fetch_eurosat_when_cached_does_not_probe(no_probe, data_root, trusted_checksums):
    write_fake_eurosat(data_root)
    assert fetch_eurosat(data_root) == data_root / "eurosat"


def test_fetch_eurosat_failed_download_leaves_nothing(monkeypatch, data_root):
    import torchvision.datasets

    def broken(root, download=False, **kwargs):
        (Path(root) / "eurosat").mkdir()
        (Path(root) / "eurosat" / "EuroSAT.zip").write_bytes(b"partial")
        raise OSError("connection reset")

    monkeypatch.setattr(tl_course.data, "network_available", lambda *a, **k: True)
    monkeypatch.setattr(torchvision.datasets, "EuroSAT", broken)
    with pytest.raises(DataUnavailableError) as info:
        fetch_eurosat(data_root)
    assert "tl-course fetch eurosat" in str(info.value)
    assert "connection reset" in str(info.value)
    assert list(data_root.iterdir()) == []  # no half download, no temp folder


def test_fetch_eurosat_download_is_moved_into_place(monkeypatch, data_root):
    import torchvision.datasets

    def fake_download(root, download=False, **kwargs):
        assert download and Path(root).parent == data_root  # a temp folder in the cache
        write_fake_eurosat(Path(root), per_class=1)

    monkeypatch.setattr(tl_course.data, "network_available", lambda *a, **k: True)
    monkeypatch.setattr(torchvision.datasets, "EuroSAT", fake_download)
    assert fetch_eurosat(data_root) == data_root / "eurosat"
    assert eurosat_cached(data_root)
    assert [p.name for p in data_root.iterdir()] == ["eurosat"]
