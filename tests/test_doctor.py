"""tl-course doctor: every problem comes with its fix."""

from __future__ import annotations

from importlib import metadata

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
