import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import nbformat
import pytest

import tl_course.data as data
from tl_course.cli import build_parser, main
from tl_course.data import DATA_ENV
from tl_course.device import DEVICE_ENV, get_device
from tl_course.profile import PROFILE_ENV
from tl_course.runcard import RUNCARD_ENV


def _notebook(path: Path, *cells: str, markdown_first: bool = False) -> Path:
    nb = nbformat.v4.new_notebook()
    if markdown_first:
        nb.cells.append(nbformat.v4.new_markdown_cell("# A test notebook"))
    nb.cells += [nbformat.v4.new_code_cell(src) for src in cells]
    nb.metadata["kernelspec"] = {
        "name": "python3", "display_name": "Python 3", "language": "python",
    }
    nbformat.write(nb, path)
    return path


# ----------------------------------------------------------------- input errors (no kernel)


def test_run_bogus_profile(tmp_path, capsys, one_error_line):
    nb = _notebook(tmp_path / "x.ipynb", "1 + 1")
    assert main(["run", str(nb), "--profile", "bogus", "--out", str(tmp_path / "out")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "bogus" in line
    for name in ("smoke", "cpu", "gpu"):
        assert name in line
    assert not (tmp_path / "out").exists()  # validated before anything ran


def test_run_bogus_profile_from_env(tmp_path, capsys, monkeypatch, one_error_line):
    monkeypatch.setenv(PROFILE_ENV, "huge")
    nb = _notebook(tmp_path / "x.ipynb", "1 + 1")
    assert main(["run", str(nb), "--out", str(tmp_path / "out")]) == 1
    assert PROFILE_ENV in one_error_line(capsys.readouterr().err)


def test_run_missing_notebook(tmp_path, capsys, one_error_line):
    missing = tmp_path / "nope.ipynb"
    assert main(["run", str(missing), "--profile", "smoke", "--out", str(tmp_path)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "not found" in line and "nope.ipynb" in line


def test_run_checks_every_notebook_before_running_any(tmp_path, capsys, one_error_line):
    good = _notebook(tmp_path / "good.ipynb", "1 + 1")
    out = tmp_path / "out"
    assert main(["run", str(good), str(tmp_path / "missing.ipynb"), "--profile", "smoke",
                 "--out", str(out)]) == 1
    assert "missing.ipynb" in one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_run_rejects_non_notebook(tmp_path, capsys, one_error_line):
    script = tmp_path / "01_intro.py"
    script.write_text("print(1)\n")
    assert main(["run", str(script), "--profile", "smoke", "--out", str(tmp_path / "o")]) == 1
    assert ".ipynb" in one_error_line(capsys.readouterr().err)


def test_fetch_bogus_lists_fetchable(capsys, one_error_line):
    assert main(["fetch", "bogus"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "bogus" in line and "mnist" in line


def test_fetch_nothing_named(capsys, one_error_line):
    assert main(["fetch"]) == 1
    assert "tl-course fetch mnist" in one_error_line(capsys.readouterr().err)


def test_fetch_offline_names_the_fix(capsys, monkeypatch, data_root, one_error_line):
    monkeypatch.setattr(data, "network_available", lambda *a, **k: False)
    assert main(["fetch", "mnist"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "no network" in line and "tl-course fetch mnist" in line
    assert main(["fetch", "--all"]) == 1
    one_error_line(capsys.readouterr().err)


def test_fetch_when_cached(capsys, data_root, mnist_writer, trusted_checksums):
    mnist_writer(data_root)
    assert main(["fetch", "mnist"]) == 0
    assert f"mnist: ready in {data_root / 'MNIST'}" in capsys.readouterr().out


def test_fetch_list(capsys, data_root, mnist_writer, trusted_checksums):
    assert main(["fetch", "--list"]) == 0
    out = capsys.readouterr().out
    assert "mnist" in out and "missing" in out and str(data_root) in out
    mnist_writer(data_root)
    assert main(["fetch", "--list"]) == 0
    out = capsys.readouterr().out
    mnist_line = next(line for line in out.splitlines() if line.startswith("mnist"))
    assert mnist_line.split()[-1] == "cached"


@pytest.mark.parametrize(
    "argv",
    [[], ["bogus"], ["run"], ["run", "x.ipynb", "--timeout", "soon"], ["fetch", "--nope"]],
)
def test_argparse_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("tl-course: error:") and "--help" in err


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("run", "fetch", "doctor"):
        assert cmd in out


def test_parser_defaults():
    args = build_parser().parse_args(["run", "a.ipynb"])
    assert args.profile is None and args.out == "runs" and args.timeout == 1800


def test_doctor_prints_device_and_cache(
    capsys, monkeypatch, data_root, mnist_writer, trusted_checksums,
):
    monkeypatch.setenv(PROFILE_ENV, "smoke")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"device={get_device()}" in out and "profile=smoke" in out
    assert f"data cache: {data_root}" in out
    assert "missing" in out and "tl-course fetch mnist" in out
    assert "free disk" in out
    mnist_writer(data_root)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "ok mnist: cached" in out and "tl-course fetch mnist" not in out


def test_doctor_reports_a_bad_device_with_its_fix(capsys, monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "bogus")
    assert main(["doctor"]) == 0  # doctor reports problems, it does not stop at one
    captured = capsys.readouterr()
    line = next(ln for ln in captured.out.splitlines() if ln.startswith("!! device"))
    assert "'bogus'" in line and f"unset {DEVICE_ENV}" in line
    assert "Traceback" not in captured.err


# ----------------------------------------------------------------- real runs (one kernel each)


def _run_in_process(tmp: Path, argv: list[str]) -> dict:
    """Run main(argv) with captured stdio and a hermetic environment; report what happened."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DATA_ENV, str(tmp / "data"))
        mp.setenv("OMP_NUM_THREADS", "1")  # the kernel shares 2 cores with this process
        for name in (RUNCARD_ENV, DEVICE_ENV, PROFILE_ENV):
            mp.setenv(name, "placeholder")
            mp.delenv(name)
        before = dict(os.environ)
        out, err = StringIO(), StringIO()
        mp.setattr(sys, "stdout", out)
        mp.setattr(sys, "stderr", err)
        code = main(argv)
        after = dict(os.environ)
    return {"code": code, "stdout": out.getvalue(), "err": err.getvalue(),
            "env_before": before, "env_after": after}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("good")
    nb = _notebook(
        tmp / "nb.ipynb",
        "import os\nimport tl_course\ntl_course.record('x_acc', 0.5)",
        "print('profile:', os.environ['TL_COURSE_PROFILE'])",
    )
    out = tmp / "runs"
    result = _run_in_process(tmp, ["run", str(nb), "--profile", "smoke", "--out", str(out)])
    return result | {"nb": nb, "out": out}


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("failed")
    nb = _notebook(
        tmp / "bad.ipynb",
        "from tl_course.runcard import record\nrecord('before', 1.0)",
        "raise ValueError('boom')",
        "print('never reached')",
        markdown_first=True,
    )
    out = tmp / "runs"
    result = _run_in_process(tmp, ["run", str(nb), "--profile", "smoke", "--out", str(out)])
    return result | {"nb": nb, "out": out}


def test_run_ok(good_run):
    assert good_run["code"] == 0, good_run["err"]
    assert good_run["err"] == ""
    assert "x_acc=0.5000" in good_run["stdout"]


def test_run_writes_executed_copy(good_run):
    executed = nbformat.read(good_run["out"] / "nb.ipynb", as_version=4)
    texts = [o.get("text", "") for c in executed.cells for o in c.get("outputs", [])]
    assert any("recorded x_acc = 0.5000" in t for t in texts)
    assert any("profile: smoke" in t for t in texts)  # the profile reached the kernel
    original = nbformat.read(good_run["nb"], as_version=4)
    assert all(not c.get("outputs") for c in original.cells)  # source left untouched


def test_run_card(good_run):
    card = json.loads((good_run["out"] / "nb.runcard.json").read_text())
    assert card["status"] == "ok" and card["notebook"] == "nb.ipynb"
    assert card["profile"] == "smoke"
    assert card["metrics"] == {"x_acc": 0.5}
    assert card["skipped"] == []
    assert isinstance(card["seconds"], float) and card["seconds"] >= 0
    assert {"python", "torch", "torchvision", "numpy"} <= set(card["versions"])
    assert card["device"] == str(get_device())
    assert "error" not in card


def test_run_leaves_only_results_in_out(good_run):
    assert sorted(p.name for p in good_run["out"].iterdir()) == ["nb.ipynb", "nb.runcard.json"]


def test_run_leaves_the_callers_environment_alone(good_run):
    # main() is callable in-process: the profile and run card belong to the kernel only.
    changed = {k for k in good_run["env_before"].keys() | good_run["env_after"].keys()
               if good_run["env_before"].get(k) != good_run["env_after"].get(k)}
    assert changed == set()


def test_failed_run_is_one_line(failed_run, one_error_line):
    assert failed_run["code"] == 1
    line = one_error_line(failed_run["err"])
    assert "boom" in line and "ValueError" in line
    assert "cell 2" in line and "bad.ipynb" in line


def test_failed_run_card(failed_run):
    card = json.loads((failed_run["out"] / "bad.runcard.json").read_text())
    assert card["status"] == "failed"
    assert "boom" in card["error"]
    assert card["metrics"] == {"before": 1.0}  # what ran before the failure is kept
    executed = nbformat.read(failed_run["out"] / "bad.ipynb", as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert len(errors) == 1 and errors[0]["ename"] == "ValueError"


# ----------------------------------------------------------------- the installed console script


@pytest.mark.integration
def test_console_script_bad_profile(tmp_path):
    script = Path(sys.executable).parent / "tl-course"
    assert script.exists(), "the package's console script is not installed"
    nb = _notebook(tmp_path / "nb.ipynb", "1 + 1")
    proc = subprocess.run([str(script), "run", str(nb), "--profile", "bogus"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("tl-course: error:") and "smoke" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_kernel_that_never_starts_is_one_line(tmp_path, capsys, monkeypatch, one_error_line):
    """E.g. no loopback network (a sandbox): nbclient raises a bare RuntimeError."""
    import nbclient

    def no_kernel(self, **kwargs):
        raise RuntimeError("Kernel didn't respond in 60 seconds")

    monkeypatch.setattr(nbclient.NotebookClient, "execute", no_kernel)
    nb = _notebook(tmp_path / "nb.ipynb", "print(1)")
    assert main(["run", str(nb), "--profile", "smoke", "--out", str(tmp_path / "runs")]) == 1
    err = one_error_line(capsys.readouterr().err)
    assert "kernel did not start (Kernel didn't respond in 60 seconds)" in err
    assert "127.0.0.1" in err
