"""tl-course doctor: every problem comes with its fix."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

import tl_course.doctor as doctor
from tl_course.cli import main


def test_versions_outside_the_range_are_problems_with_a_fix(monkeypatch):
    real = metadata.version
    monkeypatch.setattr(doctor.metadata, "version",
                        lambda name: "1.0.0" if name == "torch" else real(name))
    checks = {c.what.split()[0]: c for c in doctor.check_versions()}
    assert not checks["torch"].ok
    assert "torch 1.0.0 (needs >=2.4)" in checks["torch"].line()
    assert 'pip install "torch>=2.4"' in checks["torch"].line()
    assert checks["numpy"].ok


def test_missing_package_is_reported(monkeypatch):
    real = metadata.version

    def version(name):
        if name == "mlxtend":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(doctor.metadata, "version", version)
    bad = [c for c in doctor.check_versions() if not c.ok]
    assert [c.what for c in bad] == ["mlxtend is not installed"]


def test_bad_profile_and_device_are_problems(monkeypatch):
    monkeypatch.setenv("TL_COURSE_PROFILE", "huge")
    monkeypatch.setenv("TL_COURSE_DEVICE", "tpu")
    assert not doctor.check_profile().ok and "smoke, cpu or gpu" in doctor.check_profile().fix
    assert not doctor.check_device().ok


def test_low_disk_is_a_problem(monkeypatch, tmp_path):
    monkeypatch.setattr(doctor, "MIN_FREE_GB", 1e9)
    assert not doctor.check_disk(tmp_path).ok


def test_report_counts_missing_caches_with_fetch_commands(capsys, data_root):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "!! mnist: missing  -> tl-course fetch mnist" in out
    assert "ok ipywidgets" in out
    assert out.strip().splitlines()[-1].endswith("problem(s)")


@pytest.mark.integration
def test_console_script_names_out_of_range_versions_when_the_course_cannot_import(
        monkeypatch, capsys):
    """A broken environment (here: importing the CLI fails, torch reported as 2.1.2) gets the
    version problems and their fixes, not a traceback."""
    from tl_course import entry

    real = metadata.version
    monkeypatch.setattr(metadata, "version",
                        lambda name: "2.1.2" if name == "torch" else real(name))
    monkeypatch.setitem(sys.modules, "tl_course.cli", None)  # import raises ImportError
    assert entry.main(["doctor"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tl-course: error: the course cannot be imported (ModuleNotFoundError")
    assert '!! torch 2.1.2 (needs >=2.4)  -> pip install "torch>=2.4"' in err
    assert "numpy" not in err  # only what is wrong


def test_importing_the_package_imports_no_torch():
    """`import tl_course` must succeed where torch is broken, so that doctor can run."""
    code = "import sys, tl_course; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
