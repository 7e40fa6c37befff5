"""`tl-course fetch` for EuroSAT and ImageNet weights, offline."""

import pytest
import torch

import tl_course.data
import tl_course.photos
from tl_course.cli import cache_status, fetchables, main
from tl_course.models import weights_file

ITEMS = ("mnist", "usps", "svhn", "eurosat", "resnet18", "mobilenet_v3_small", "efficientnet_b0")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(tl_course.data, "network_available", lambda *a, **k: False)


def _listing(out: str) -> dict[str, str]:
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] in ("cached", "missing", "corrupt"):
            rows[parts[0]] = parts[1]
    return rows


def test_fetchables_and_cache_status_cover_everything(data_root):
    assert list(fetchables()) == list(ITEMS)
    assert all(callable(f) for f in fetchables().values())
    assert cache_status(data_root) == dict.fromkeys(ITEMS, "missing")


def test_fetch_list_all_missing(capsys, data_root):
    assert main(["fetch", "--list"]) == 0
    captured = capsys.readouterr()
    assert _listing(captured.out) == dict.fromkeys(ITEMS, "missing")
    assert str(data_root) in captured.out
    assert str(weights_file("resnet18").parent) in captured.out
    assert captured.err == ""


def test_fetch_list_shows_cached_weights_and_data(
    capsys, data_root, mnist_writer, trusted_checksums,
):
    path = weights_file("resnet18")
    path.parent.mkdir(parents=True)
    torch.save({}, path)
    (data_root / "eurosat" / "2750").mkdir(parents=True)
    mnist_writer(data_root)
    assert main(["fetch", "--list"]) == 0
    assert _listing(capsys.readouterr().out) == {
        "mnist": "cached", "usps": "missing", "svhn": "missing", "eurosat": "cached",
        "resnet18": "cached", "mobilenet_v3_small": "missing", "efficientnet_b0": "missing",
    }


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_fetch_weights_offline_is_one_line(name, capsys, offline, one_error_line):
    assert main(["fetch", name]) == 1
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert f"tl-course fetch {name}" in line and "no network" in line
    assert captured.out == ""
    assert not weights_file(name).exists()


def test_fetch_eurosat_offline_is_one_line(capsys, offline, data_root, one_error_line):
    assert main(["fetch", "eurosat"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "tl-course fetch eurosat" in line and "no network" in line


def test_fetch_cached_weights_is_ready(capsys, offline, trusted_checksums):
    path = weights_file("resnet18")
    path.parent.mkdir(parents=True)
    torch.save({}, path)
    assert main(["fetch", "resnet18"]) == 0
    assert f"resnet18: ready in {path}" in capsys.readouterr().out


def test_fetch_unknown_lists_the_fetchable_ones(capsys, one_error_line):
    assert main(["fetch", "imagenet"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "imagenet" in line
    for name in ITEMS:
        assert name in line


def test_fetch_stops_before_downloading_when_one_name_is_unknown(
    capsys, monkeypatch, one_error_line,
):
    called = []
    monkeypatch.setattr(tl_course.data, "network_available", lambda *a, **k: called.append(1))
    assert main(["fetch", "mnist", "bogus"]) == 1
    assert "bogus" in one_error_line(capsys.readouterr().err)
    assert called == []


def test_corrupt_weights_are_listed_and_repaired(capsys, data_root, monkeypatch, one_error_line):
    # A truncated copy: present, but its SHA-256 does not match the prefix in its name.
    path = tl_course.models.weights_file("resnet18")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half a file")
    assert main(["fetch", "--list"]) == 0
    assert _listing(capsys.readouterr().out)["resnet18"] == "corrupt"
    # Offline, fetch removes the bad copy (torch.hub would never replace it) and says why.
    assert main(["fetch", "resnet18"]) == 1
    captured = capsys.readouterr()
    assert "fails its checksum" in captured.out
    assert "tl-course fetch resnet18" in one_error_line(captured.err)
    assert not path.exists()


def test_weights_intact_checks_the_hash_prefix_in_the_name(tmp_path, monkeypatch):
    import hashlib

    content = b"pretend weights"
    prefix = hashlib.sha256(content).hexdigest()[:8]
    good = tmp_path / f"net-{prefix}.pth"
    good.write_bytes(content)
    monkeypatch.setattr(tl_course.models, "weights_file", lambda name: good)
    assert tl_course.models.weights_intact("resnet18")
    good.write_bytes(content + b"!")
    assert not tl_course.models.weights_intact("resnet18")


def test_unreadable_weights_give_one_clear_error(data_root, trusted_checksums):
    path = tl_course.models.weights_file("resnet18")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(tl_course.models.WeightsUnavailableError, match="fetch resnet18"):
        tl_course.models.create_backbone("resnet18", 3, pretrained=True)
