"""The offline classroom kit: built whole or not at all, checked file by file, installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tl_course import classroom, kit
from tl_course.cli import main

ROOT = Path(__file__).resolve().parents[1]
HERE = f"{sys.version_info[0]}.{sys.version_info[1]}"


def _repo(tmp_path: Path) -> Path:
    """A tiny git clone of a 'course' with built slides beside its tracked files."""
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    (repo / "notebooks" / "01_x.py").write_text("print(1)\n")
    (repo / "README.md").write_text("course\n")
    (repo / "untracked.txt").write_text("not in the kit\n")
    (repo / "slides" / "_build").mkdir(parents=True)
    (repo / "slides" / "_build" / "01_x.html").write_text("<html></html>")
    (repo / "slides" / "_build" / "lib").mkdir()
    (repo / "slides" / "_build" / "lib" / "reveal.js").write_text("// reveal")
    (repo / "slides" / "_build" / "screenshots").mkdir()  # test output, not for the kit
    (repo / "slides" / "_build" / "screenshots" / "01.png").write_bytes(b"png")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "notebooks", "README.md"], check=True)
    return repo


def _fake_download(commands):
    """Stands in for pip: writes one file per command into its --dest."""
    for i, cmd in enumerate(commands):
        dest = Path(cmd[cmd.index("--dest") + 1])
        (dest / f"pkg{i}-1.0-py3-none-any.whl").write_bytes(b"wheel %d" % i)


def _build(tmp_path: Path, fetch: dict, **kw) -> Path:
    data_root, weights = tmp_path / "data", tmp_path / "hub" / "checkpoints"
    weights.mkdir(parents=True)
    (weights / "resnet18-f37072fd.pth").write_bytes(b"weights")
    options = dict(repo=_repo(tmp_path), fetch=fetch, data_root=data_root, weights_dir=weights,
                   platforms=[], pythons=[HERE], torch_index=None, download=_fake_download)
    options.update(kw)
    return classroom.build(tmp_path / "kit", **options)


def _fetch_mnist(root: Path) -> Path:
    (root / "mnist").mkdir(parents=True, exist_ok=True)
    (root / "mnist" / "train.gz").write_bytes(b"digits")
    return root / "mnist"


def _offline(root: Path) -> Path:
    raise ConnectionError("no network")


def test_built_kit_holds_course_data_weights_slides_wheels_and_checks_clean(tmp_path):
    dest = _build(tmp_path, {"mnist": _fetch_mnist})
    assert kit.check(dest) == []
    manifest = kit.read_manifest(dest)
    files = set(manifest["files"])
    assert {"course/notebooks/01_x.py", "course/README.md", "data/mnist/train.gz",
            "weights/resnet18-f37072fd.pth", "slides/01_x.html", "README.txt"} <= files
    assert "course/untracked.txt" not in files  # only what git tracks
    assert "slides/lib/reveal.js" in files and "slides/screenshots/01.png" not in files
    assert any(f.startswith("wheels/") for f in files)
    assert manifest["platforms"] == [kit.this_platform()] and manifest["pythons"] == [HERE]
    want = kit.sha256(dest / "data" / "mnist" / "train.gz")
    assert manifest["files"]["data/mnist/train.gz"]["sha256"] == want


def test_unavailable_item_stops_the_build_and_leaves_no_partial_kit(tmp_path):
    with pytest.raises(kit.KitError, match="could not fetch usps.*--allow-missing"):
        _build(tmp_path, {"mnist": _fetch_mnist, "usps": _offline})
    assert not (tmp_path / "kit").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".kit.partial")]


def test_allow_missing_records_what_was_left_out(tmp_path):
    dest = _build(tmp_path, {"mnist": _fetch_mnist, "usps": _offline}, allow_missing=True)
    assert kit.read_manifest(dest)["missing"] == ["usps"]
    assert "usps" in (dest / "README.txt").read_text()
    assert kit.check(dest) == []


def test_existing_destination_is_refused(tmp_path):
    (tmp_path / "kit").mkdir()
    with pytest.raises(kit.KitError, match="exists"):
        _build(tmp_path, {})


def test_check_names_each_missing_truncated_or_altered_file(tmp_path):
    dest = _build(tmp_path, {"mnist": _fetch_mnist})
    (dest / "course" / "README.md").unlink()
    data = dest / "data" / "mnist" / "train.gz"
    data.write_bytes(b"DIGITS")  # same size, other content
    weights = dest / "weights" / "resnet18-f37072fd.pth"
    weights.write_bytes(b"wei")
    problems = kit.check(dest)
    assert problems == [
        "missing: course/README.md",
        "corrupt: data/mnist/train.gz (SHA-256 differs)",
        "truncated or changed: weights/resnet18-f37072fd.pth (3 bytes, expected 7)",
    ]
    with pytest.raises(kit.KitError, match="damaged: missing: course/README.md"):
        kit.require_intact(dest)


def test_a_folder_without_manifest_is_not_a_kit(tmp_path):
    with pytest.raises(kit.KitError, match="not a tl-course kit"):
        kit.check(tmp_path)


def test_install_copies_data_and_weights_once(tmp_path):
    dest = _build(tmp_path, {"mnist": _fetch_mnist})
    data, weights = tmp_path / "student" / "data", tmp_path / "student" / "ckpt"
    assert classroom.install_caches(dest, data, weights) == (1, 1)
    assert (data / "mnist" / "train.gz").read_bytes() == b"digits"
    assert (weights / "resnet18-f37072fd.pth").read_bytes() == b"weights"
    assert classroom.install_caches(dest, data, weights) == (0, 0)  # already there


def test_install_refuses_a_damaged_kit_and_copies_nothing(tmp_path):
    dest = _build(tmp_path, {"mnist": _fetch_mnist})
    (dest / "data" / "mnist" / "train.gz").write_bytes(b"DIGITS")
    data = tmp_path / "student" / "data"
    with pytest.raises(kit.KitError, match="corrupt: data/mnist/train.gz"):
        classroom.install_caches(dest, data, tmp_path / "student" / "ckpt")
    assert not data.exists()


def test_kit_for_another_python_or_platform_is_refused_with_the_fix():
    manifest = {"pythons": ["3.12"], "platforms": ["windows-x86_64"]}
    with pytest.raises(kit.KitError, match="Python 3.12, not 3.11.*--python 3.11"):
        kit.require_target(manifest, "windows-x86_64", "3.11")
    with pytest.raises(kit.KitError, match="not for linux-x86_64.*--platform"):
        kit.require_target(manifest, "linux-x86_64", "3.12")
    kit.require_target(manifest, "windows-x86_64", "3.12")  # matches: no error


@pytest.mark.parametrize("tag, expected", [
    ("manylinux_2_28_x86_64", "linux-x86_64"), ("manylinux2014_aarch64", "linux-arm64"),
    ("win_amd64", "windows-x86_64"), ("macosx_14_0_arm64", "macos-arm64"),
])
def test_platform_ids(tag, expected):
    assert kit.platform_id(tag) == expected


def test_pip_commands_take_cpu_torch_from_its_index_except_on_macos(tmp_path):
    reqs = ["torch>=2.4", "torchvision>=0.19", "numpy>=1.26"]
    cmds = kit.pip_download_commands(reqs, tmp_path, ["manylinux_2_28_x86_64",
                                                      "macosx_14_0_arm64"], ["3.12"],
                                     kit.TORCH_CPU_INDEX)
    linux_torch, linux_rest, mac = cmds
    assert linux_torch[-2:] == ["torch>=2.4", "torchvision>=0.19"]
    assert linux_torch[linux_torch.index("--index-url") + 1] == kit.TORCH_CPU_INDEX
    assert "torch>=2.4" not in linux_rest and "numpy>=1.26" in linux_rest
    assert "setuptools>=64" in linux_rest  # the build backend, for an offline pip install -e .
    assert "--index-url" not in mac and "torch>=2.4" in mac
    for cmd in cmds:
        assert cmd[cmd.index("--abi") + 1] == "cp312"
        assert "--only-binary=:all:" in cmd and str(tmp_path) in cmd
    assert [c[c.index("--platform") + 1] for c in cmds] == [
        "manylinux_2_28_x86_64", "manylinux_2_28_x86_64", "macosx_14_0_arm64"]


def test_pip_failure_is_one_error_with_a_hint_for_the_torch_index(tmp_path):
    def failing(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\n")

    cmds = kit.pip_download_commands(["torch>=2.4"], tmp_path, ["win_amd64"], ["3.11"],
                                     kit.TORCH_CPU_INDEX)
    with pytest.raises(kit.KitError, match="--torch-index default.*Could not find a version"):
        kit.download_wheels(cmds, run=failing)


def test_cli_kit_check_reports_problems_in_one_line(tmp_path, capsys):
    dest = _build(tmp_path, {"mnist": _fetch_mnist})
    assert main(["kit", "check", str(dest)]) == 0
    assert "intact" in capsys.readouterr().out
    (dest / "README.txt").unlink()
    assert main(["kit", "check", str(dest)]) == 1
    captured = capsys.readouterr()
    assert "missing: README.txt" in captured.out
    assert captured.err.count("\n") == 1 and "copy it again" in captured.err


def test_course_py_checks_a_kit_before_installing_anything(tmp_path):
    dest = _build(tmp_path, {"mnist": _fetch_mnist})
    course = [sys.executable, str(ROOT / "course.py")]
    ok = subprocess.run([*course, "kit-check", str(dest)], capture_output=True, text=True)
    assert ok.returncode == 0 and "intact" in ok.stdout
    manifest = json.loads((dest / kit.MANIFEST).read_text())
    manifest["pythons"] = ["3.99"]
    (dest / kit.MANIFEST).write_text(json.dumps(manifest))
    venv = tmp_path / "venv"
    bad = subprocess.run([*course, "lab", "--kit", str(dest), "--venv", str(venv)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "Python 3.99, not" in bad.stderr
    assert not venv.exists()  # refused before creating anything
    (dest / "course" / "README.md").write_text("changed")
    damaged = subprocess.run([*course, "kit-check", str(dest)], capture_output=True, text=True)
    assert damaged.returncode == 1 and "course/README.md" in damaged.stdout
