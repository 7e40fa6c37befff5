"""course.py, the README's commands without bash: old Pythons refused in one line, installs
from a kit offline, reinstalls only when the dependency list changed."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

from tests.test_kit import _build, _fetch_mnist

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def course():
    spec = importlib.util.spec_from_file_location("course_py", ROOT / "course.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parses_on_old_pythons_so_it_can_refuse_them():
    source = (ROOT / "course.py").read_text()
    assert "from __future__ import annotations" not in source  # a SyntaxError before 3.7
    ast.parse(source, feature_version=(3, 6))


def test_old_python_is_one_line(course, monkeypatch, capsys):
    monkeypatch.setattr(course.sys, "version_info", (3, 9, 18))
    with pytest.raises(SystemExit) as exit_:
        course.main(["lab"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Python 3.10 or newer is needed" in err


class _Recorder:
    """Stands in for pip and for subprocess.run (venv creation, kit install)."""

    def __init__(self):
        self.pip_calls: list[tuple] = []
        self.runs: list[list[str]] = []

    def pip(self, python, *args):
        self.pip_calls.append(args)

    def run(self, cmd, check=False, **kw):
        self.runs.append(list(cmd))
        if cmd[1:3] == ["-m", "venv"]:  # make the venv's python exist
            python = Path(cmd[3]) / ("Scripts/python.exe" if sys.platform == "win32"
                                     else "bin/python")
            python.parent.mkdir(parents=True)
            python.write_text("")


def test_kit_install_is_offline_then_skipped_until_dependencies_change(
        course, monkeypatch, tmp_path):
    kit_dir = _build(tmp_path, {"mnist": _fetch_mnist})
    fake = _Recorder()
    monkeypatch.setattr(course, "pip", fake.pip)
    monkeypatch.setattr(course.subprocess, "run", fake.run)
    venv = tmp_path / "venv"
    course.setup(venv, "", kit=kit_dir)
    (install,) = fake.pip_calls  # no "pip install --upgrade pip": that needs the network
    assert install[:4] == ("install", "--quiet", "--no-index", "--find-links")
    assert install[4] == str(kit_dir / "wheels") and install[5:] == ("-e", str(ROOT))
    assert fake.runs[-1][-4:] == ["tl_course.cli", "kit", "install", str(kit_dir)]
    course.setup(venv, "", kit=kit_dir)
    assert len(fake.pip_calls) == 1  # same dependency list: no reinstall
    course.setup(venv, "[dev]")
    assert fake.pip_calls[-1] == ("install", "--quiet", "-e", f"{ROOT}[dev]")


def test_damaged_kit_is_refused_before_anything_is_created(course, monkeypatch, tmp_path,
                                                           capsys):
    kit_dir = _build(tmp_path, {"mnist": _fetch_mnist})
    (kit_dir / "README.txt").write_text("edited")
    fake = _Recorder()
    monkeypatch.setattr(course.subprocess, "run", fake.run)
    with pytest.raises(SystemExit):
        course.setup(tmp_path / "venv", "", kit=kit_dir)
    assert fake.runs == [] and not (tmp_path / "venv").exists()
    assert "README.txt" in capsys.readouterr().err
