"""Mutation testing: plant small bugs in the algorithm modules and report which no test catches.

Two modes, both on copies of the code (the working tree is never modified):

    python benchmarks/mutants.py --curated           # the curated realistic bugs (CI, < 5 min)
    python benchmarks/mutants.py --curated --only grl-removed coral-detached
    python benchmarks/mutants.py adapt multitask     # mutmut on these modules: score per module
    python benchmarks/mutants.py                     # mutmut on every algorithm module (long)

--curated reads tests/mutants/curated.toml: each entry is one small textual change (file,
old text, new text) with a one-line description and the test files that cover its module.
Each is applied to a private copy of tl_course/ that is put first on PYTHONPATH, and only
those test files run (-x, so the first failing test ends the run). A mutant that no test
fails "survived": the command exits 1, so a survivor fails CI. An entry whose old text is
no longer in the file is an error (exit 2): the list must follow the code.

Without --curated, mutmut (3.x) mutates every function of the named modules (comparison
and arithmetic operators, constants, keyword arguments, removed calls, return values;
error messages and prints are left alone) in a scratch copy of the project, one module
after another (DIR/MODULE with --workdir DIR), runs the tests of the module that execute
each mutated function, and prints the score per module (killed /
all, mutants listed as equivalent counted as survivors) and every survivor's diff.
tests/mutants/equivalent/MODULE.toml lists the survivors that no test can catch because
they do not change behaviour, each with one line why; at most 5% of a module's mutants.

From course.py: `import runpy; runpy.run_path("benchmarks/mutants.py")["main"](argv)`
returns the exit status.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the course's floor is 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
CURATED = REPO / "tests" / "mutants" / "curated.toml"
EQUIVALENT = REPO / "tests" / "mutants" / "equivalent"  # one MODULE.toml per module
FAIL_UNDER = 90.0  # per module, percent of mutants killed
EQUIVALENT_CAP = 5.0  # per module, percent of mutants that may be listed as equivalent


@dataclasses.dataclass(frozen=True)
class Module:
    """An algorithm module: its source files (relative to the repository) and its tests."""

    sources: tuple[str, ...]
    tests: tuple[str, ...]


MODULES: dict[str, Module] = {
    "adapt": Module(("tl_course/adapt/",), ("tests/test_adapt.py",)),
    "multitask": Module(("tl_course/multitask.py",), ("tests/test_multitask.py",)),
    "train": Module(("tl_course/train.py",),
                    ("tests/test_train.py", "tests/test_fit_properties.py")),
    "models": Module(("tl_course/models.py",), ("tests/test_models.py",)),
    "features": Module(("tl_course/features.py",), ("tests/test_features.py",)),
    "transfer": Module(("tl_course/transfer.py",), ("tests/test_transfer.py",)),
    "data": Module(("tl_course/data.py",), ("tests/test_data.py",)),
    "domains": Module(("tl_course/domains.py",), ("tests/test_domains.py",)),
    "selfsup": Module(("tl_course/selfsup/",), ("tests/test_selfsup.py",)),
    "transferability": Module(("tl_course/transferability/",),
                              ("tests/test_transferability.py",)),
    "capstone": Module(("tl_course/capstone/",),
                       ("tests/test_capstone.py", "tests/test_capstone_folder.py",
                        "tests/test_capstone_fit.py", "tests/test_capstone_training.py")),
    "distributed": Module(("tl_course/distributed.py",), ("tests/test_distributed.py",)),
    "text": Module(("tl_course/text/",),
                   ("tests/test_text.py", "tests/test_text_models.py",
                    "tests/test_text_measures.py")),
    "bias": Module(("tl_course/bias.py",), ("tests/test_bias.py",)),
}
DEFAULT_MODULES = tuple(MODULES)

# mutmut leaves statements on lines matching these alone: error messages and printed
# notices are text, not algorithm (tests check the important ones with `match=`).
DO_NOT_MUTATE_PATTERNS = (r"^\s*raise ", r"^\s*print\(", r"warnings\.warn\(")


def _env(sandbox: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(sandbox), *filter(None, [env.get("PYTHONPATH")])])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
               MPLBACKEND="Agg")
    return env


def _pytest_args(tests: Sequence[str]) -> list[str]:
    """pytest on `tests` (paths relative to the sandbox it runs in), stopping at the first
    failure, in one process, without the notebook options of the project's addopts, and
    without the tests that start another program: the list holds the unit tests to account,
    and a torchrun started from the sandbox's fork server had its workers abort in CI."""
    return ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:nbval", "-o", "addopts=",
            "-p", "no:xdist", "-m", "not integration", *tests]


# The fork servers import these once, so that no test run pays for them: tl_course imports
# torchvision, scikit-learn and the rest lazily, inside functions, and torchvision alone
# takes 2 s to import. No torch operation runs before the fork, so no thread pool is
# inherited.
_PRELOAD = ("torch", "torchvision", "torchvision.models", "torchvision.datasets",
            "torchvision.transforms.v2", "torchvision.utils", "numpy", "scipy.stats",
            "sklearn.linear_model", "sklearn.pipeline", "sklearn.preprocessing",
            "sklearn.model_selection", "sklearn.decomposition", "sklearn.manifold",
            "sklearn.covariance", "sklearn.datasets", "matplotlib.pyplot", "tqdm.auto",
            "PIL.Image", "skimage.data", "mlxtend.data", "pytest")


def serve() -> None:
    """The fork server: one JSON request per line on stdin, one JSON answer per line."""
    import importlib
    import signal

    import matplotlib

    matplotlib.use("Agg")
    for name in _PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    assert not any(m == "tl_course" or m.startswith("tl_course.") for m in sys.modules)
    # pytest ends each session with gc.collect(): on the preloaded heap that takes 0.3 s and
    # copies every page the fork shares. Frozen objects are left out of collections.
    import gc

    gc.freeze()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        out = request["output"]
        pid = os.fork()
        if pid == 0:  # the child: run pytest, exit with its status
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            try:
                import pytest

                rc = int(pytest.main(request["args"]))
            except BaseException:  # noqa: BLE001 - report anything as an error status
                import traceback

                traceback.print_exc()
                rc = 99
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
        deadline = time.monotonic() + request["timeout"]
        status = None
        while status is None:
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(code)
            elif time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = "timeout"
            else:
                time.sleep(0.02)
        print(json.dumps({"rc": status}), flush=True)


class Sandbox:
    """A private copy of tl_course/ and tests/, with a fork server whose children run
    pytest on it. Checked to be what `import tl_course` finds there.

    The tests are copied too: pytest puts the folder of each conftest.py first on
    sys.path, and the repository's own root conftest.py would put the working tree's
    tl_course/ ahead of the copy.
    """

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
        for folder in ("tl_course", "tests"):
            shutil.copytree(REPO / folder, root / folder, ignore=skip)
        for name in ("conftest.py", "pyproject.toml"):
            if (REPO / name).exists():
                shutil.copy2(REPO / name, root / name)
        found = subprocess.run(
            [sys.executable, "-c", "import tl_course; print(tl_course.__file__)"],
            cwd=root, env=_env(root), capture_output=True, text=True)
        where = Path(found.stdout.strip() or "?").resolve()
        if found.returncode != 0 or root.resolve() not in where.parents:
            raise RuntimeError(f"the copy in {root} is not what `import tl_course` finds "
                               f"({where}; {found.stderr.strip()[-300:]})")
        self.server = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve"], cwd=root,
            env=_env(root), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if json.loads(self.server.stdout.readline() or "{}").get("ready") is not True:
            raise RuntimeError("the fork server did not start")

    def pytest(self, tests: Sequence[str], timeout: float) -> tuple[int | str, str]:
        """(exit status or "timeout", output) of pytest on `tests` in this sandbox."""
        out = self.root / "pytest-output.txt"
        request = {"args": _pytest_args(tests), "output": str(out), "timeout": timeout}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        answer = json.loads(self.server.stdout.readline())
        return answer["rc"], out.read_text(encoding="utf-8", errors="replace")

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=30)


# --------------------------------------------------------------------------- curated list


@dataclasses.dataclass
class Curated:
    id: str
    file: str
    old: str
    new: str
    why: str
    tests: tuple[str, ...]
    first: str = ""  # a test node id run on its own before the files (expected to fail)


@dataclasses.dataclass
class Outcome:
    mutant: Curated
    status: str  # killed, survived, timeout, error
    seconds: float
    detail: str = ""


def load_curated(path: Path = CURATED) -> list[Curated]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    out, seen = [], set()
    for entry in data.get("mutant", []):
        m = Curated(entry["id"], entry["file"], entry["old"], entry["new"], entry["why"],
                    tuple(entry["tests"]), entry.get("first", ""))
        if m.id in seen:
            raise ValueError(f"{path}: the id {m.id!r} appears twice")
        if m.old == m.new:
            raise ValueError(f"{path}: {m.id} changes nothing")
        seen.add(m.id)
        out.append(m)
    return out


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0]
    return ""


def _run_one(m: Curated, sandbox: Sandbox, timeout: float) -> Outcome:
    path = sandbox.root / m.file
    original = path.read_text(encoding="utf-8")
    count = original.count(m.old)
    if count != 1:
        where = "is not" if count == 0 else f"appears {count} times"
        return Outcome(m, "error", 0.0, f"the old text {where} in {m.file}: update the list")
    mutated = original.replace(m.old, m.new)
    try:
        compile(mutated, str(path), "exec")
    except SyntaxError as exc:
        return Outcome(m, "error", 0.0, f"the mutant does not compile: {exc}")
    start = time.perf_counter()
    path.write_text(mutated, encoding="utf-8")
    try:
        rc, output = sandbox.pytest([m.first], timeout) if m.first else (0, "")
        if rc in (0, 4, 5):  # `first` passed, or is gone: run the files
            rc, output = sandbox.pytest(m.tests, timeout)
    finally:
        path.write_text(original, encoding="utf-8")
    seconds = time.perf_counter() - start
    if rc == "timeout":
        return Outcome(m, "timeout", seconds, "killed by the time limit")
    if rc == 1:
        return Outcome(m, "killed", seconds, _first_failure(output))
    if rc == 0:
        return Outcome(m, "survived", seconds)
    if rc in (2, 3) or (rc == 4 and "while loading conftest" in output):
        # Collection or import failed (interrupted, internal error, conftest import):
        # the mutant breaks the package, which the tests notice; mutmut counts it so too.
        return Outcome(m, "killed", seconds, f"pytest exit {rc} (import or collection)")
    return Outcome(m, "error", seconds, f"pytest exit {rc}: {output[-500:]}")


def _parallel(tasks, sandboxes: list[Sandbox], fn):
    """Yield fn(task, sandbox) for every task as it finishes, one task per sandbox at a time."""
    free: queue.Queue[Sandbox] = queue.Queue()
    for s in sandboxes:
        free.put(s)

    def work(task):
        sandbox = free.get()
        try:
            return fn(task, sandbox)
        finally:
            free.put(sandbox)

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(sandboxes)) as pool:
        futures = [pool.submit(work, t) for t in tasks]
        for f in concurrent.futures.as_completed(futures):
            yield f.result()


def _canary(sandbox: Sandbox, timeout: float) -> bool:
    """A copy whose import fails must fail the tests: proof that they import the copy."""
    init = sandbox.root / "tl_course" / "__init__.py"
    original = init.read_text(encoding="utf-8")
    init.write_text(original + "\nraise RuntimeError('mutant canary')\n", encoding="utf-8")
    try:
        rc, output = sandbox.pytest(["tests/test_multitask.py"], timeout)
    finally:
        init.write_text(original, encoding="utf-8")
    if rc == 0 or "mutant canary" not in output:
        print("the canary survived: the tests do not import the mutated copy of tl_course",
              file=sys.stderr)
        return False
    return True


def run_curated(path: Path = CURATED, only: Sequence[str] = (), jobs: int = 2,
                timeout: float = 300.0, baseline: bool = True) -> int:
    """Apply each curated mutant to a copy of tl_course and run its tests; 0 if all die."""
    mutants = load_curated(path)
    if only:
        unknown = sorted(set(only) - {m.id for m in mutants})
        if unknown:
            print(f"unknown mutant id(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m.id in only]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tlc-mutants-") as tmp:
        sandboxes = [Sandbox(Path(tmp) / f"s{k}") for k in range(max(1, jobs))]
        try:
            if not _canary(sandboxes[0], timeout):
                return 2
            if baseline:
                files = sorted({t for m in mutants for t in m.tests})
                for rc, output in _parallel([[f] for f in files], sandboxes,
                                            lambda g, s: s.pytest(g, timeout)):
                    if rc != 0:
                        print("the unmutated tests fail, so no mutant result would mean "
                              "anything:\n" + output[-2000:], file=sys.stderr)
                        return 2
                print(f"baseline: {len(files)} test files pass "
                      f"({time.perf_counter() - start:.0f}s)", flush=True)
            outcomes = []
            for o in _parallel(mutants, sandboxes, lambda m, s: _run_one(m, s, timeout)):
                outcomes.append(o)
                print(f"{o.status:8s} {o.seconds:5.1f}s  {o.mutant.id:30s} {o.detail}",
                      flush=True)
        finally:
            for s in sandboxes:
                s.close()
    survived = [o for o in outcomes if o.status == "survived"]
    errors = [o for o in outcomes if o.status == "error"]
    killed = len(outcomes) - len(survived) - len(errors)
    print(f"\n{killed} of {len(outcomes)} curated mutants killed, {len(survived)} survived, "
          f"{len(errors)} errors, in {time.perf_counter() - start:.0f}s")
    for o in survived:
        print(f"SURVIVED {o.mutant.id}: {o.mutant.why}\n  {o.mutant.file}: "
              f"{o.mutant.old.strip()!r} -> {o.mutant.new.strip()!r}\n  tests: "
              f"{' '.join(o.mutant.tests)}")
    for o in errors:
        print(f"ERROR {o.mutant.id}: {o.detail}")
    return 2 if errors else 1 if survived else 0


# --------------------------------------------------------------------------- mutmut


def _module_files(names: Sequence[str]) -> dict[str, list[str]]:
    """{module: its .py files, relative to the repository}."""
    out = {}
    for name in names:
        files = []
        for src in MODULES[name].sources:
            p = REPO / src
            files += ([str(f.relative_to(REPO)) for f in sorted(p.rglob("*.py"))
                       if "__pycache__" not in f.parts] if p.is_dir() else [src])
        out[name] = files
    return out


def load_equivalents(folder: Path = EQUIVALENT) -> dict[str, dict[str, str]]:
    """{mutmut mutant name: {"mutant": ..., "why": ...}} from every file in `folder`."""
    out: dict[str, dict[str, str]] = {}
    for path in sorted(folder.glob("*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        for entry in data.get("equivalent", []):
            if not entry.get("why"):
                raise ValueError(f"{path}: {entry.get('mutant')} needs a `why`")
            if entry["mutant"] in out:
                raise ValueError(f"{path}: {entry['mutant']} is listed twice")
            out[entry["mutant"]] = entry
    return out


def _write_mutmut_config(work: Path, files: Sequence[str], tests: Sequence[str],
                         jobs: int) -> None:
    lines = [
        "[tool.mutmut]",
        'source_paths = ["tl_course/"]',
        f"only_mutate = {json.dumps(list(files))}",
        f"do_not_mutate_patterns = {json.dumps(list(DO_NOT_MUTATE_PATTERNS))}",
        # Tests that start another program (torchrun, a browser, a notebook) would run the
        # unmutated code in it: they cannot tell mutants apart, and only cost time.
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:xdist", "-q", '
        '"-m", "not integration"]',
        f"pytest_add_cli_args_test_selection = {json.dumps(list(tests))}",
        # torch is not fork-safe once the test session has run: fork from a clean server.
        'process_isolation = "forkserver"',
        "timeout_multiplier = 5.0",
        "timeout_constant = 30.0",
        "",
        "[tool.pytest.ini_options]",
        'filterwarnings = ["ignore::DeprecationWarning:jupyter_client.*"]',
        'markers = ["integration: starts another program"]',
        "",
    ]
    (work / "pyproject.toml").write_text("\n".join(lines), encoding="utf-8")


# Two changes to mutmut's fork-server runner, made by this launcher:
# - It hands each mutant its tests in set order; its plain fork runner sorts them fastest
#   first. With pytest's -x a killed mutant ends at its first failing test, so the fast
#   tests first make most mutants cheap: do the same here.
# - Its fork server imports what collecting the tests imports. tl_course imports
#   torchvision, scikit-learn and others inside functions, so each mutant's run paid 2 s
#   to import them, and pytest's closing gc.collect() went through the whole inherited
#   heap (0.6 s). Preloading them and freezing the heap took a one-test run from 2.1 s to
#   0.1 s.
_LAUNCH = """
import gc
import importlib
import sys
from mutmut.__main__ import cli, state
from mutmut.runners import harness
from mutmut.workers import isolation

PRELOAD = sys.argv.pop(1).split(",")
_submit = isolation.ForkServerRunner.submit
_warm_up = harness.PytestRunner.warm_up


def submit(self, mutant_name, tests, *args, **kwargs):
    durations = state().duration_by_test
    tests = sorted(tests, key=lambda t: (durations.get(t, 0.0), t))
    return _submit(self, mutant_name, tests, *args, **kwargs)


def warm_up(self):
    _warm_up(self)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    gc.freeze()


isolation.ForkServerRunner.submit = submit
harness.PytestRunner.warm_up = warm_up
sys.argv[0] = "mutmut"
cli()
"""


def _mutmut(work: Path, *args: str, capture: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-c", _LAUNCH, ",".join(_PRELOAD), *args],
                          cwd=work, env=env,
                          capture_output=capture, text=True)


_SHOW = """
import sys
from mutmut.__main__ import cli
for name in sys.argv[1:]:
    print("@@@", name, flush=True)
    try:
        cli.main(args=["show", name], standalone_mode=False)
    except SystemExit:
        pass
"""


def _diffs(work: Path, names: Sequence[str]) -> dict[str, str]:
    """{mutant: its diff}, from one process (one `mutmut show` each takes a second)."""
    if not names:
        return {}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _SHOW, *names], cwd=work, env=env,
                          capture_output=True, text=True)
    out: dict[str, str] = {}
    for chunk in proc.stdout.split("@@@ ")[1:]:
        name, _, diff = chunk.partition("\n")
        out[name.strip()] = diff
    missing = [n for n in names if n not in out]
    for n in missing:  # the in-process call failed (another mutmut version): one by one
        out[n] = _mutmut(work, "show", n).stdout
    return out


KILLED = {1, 3, 24, -24, 36, 152, 255, -11, -9, 37}  # killed, timeout, segfault, type check
SURVIVED = {0, 5, 33, 35}  # survived, no tests, suspicious


def _mutmut_module(name: str, work: Path, jobs: int, resume: bool) -> int:
    """One mutmut run on module `name` in `work`, with that module's own tests; its exit
    status."""
    module_files = _module_files([name])[name]
    tests = list(MODULES[name].tests)
    work.mkdir(parents=True, exist_ok=True)
    if resume and (work / "mutants").is_dir():
        print(f"resuming the mutmut run in {work} (its copy of the code and tests)", flush=True)
    else:
        for folder in ("tl_course", "tests", "mutants"):
            shutil.rmtree(work / folder, ignore_errors=True)
        for folder in ("tl_course", "tests"):
            shutil.copytree(REPO / folder, work / folder,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "mutants"))
        _write_mutmut_config(work, module_files, tests, jobs)
    print(f"mutmut on {name} in {work} ({jobs} workers); tests: {' '.join(tests)}", flush=True)
    return _mutmut(work, "run", "--max-children", str(jobs), capture=False).returncode


def run_mutmut(names: Sequence[str], jobs: int = 2, workdir: Path | None = None,
               fail_under: float = FAIL_UNDER, show_diffs: bool = True,
               resume: bool = False) -> int:
    """mutmut on `names`, one module after another, each mutant tested by its own module's
    tests; prints the score per module and each survivor's diff."""
    try:
        import mutmut  # noqa: F401
    except ImportError:
        print("mutmut is not installed: pip install -e '.[mutants]' (mutmut>=3.8.1)",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="tlc-mutmut-")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    stopped, seconds = [], {}
    for name in names:
        t0 = time.perf_counter()
        rc = _mutmut_module(name, work / name, jobs, resume)
        seconds[name] = time.perf_counter() - t0
        if rc != 0:  # report what was measured; `--workdir DIR --resume` goes on from there
            print(f"\nmutmut run on {name} stopped (exit {rc}): partial results below",
                  file=sys.stderr)
            stopped.append(name)
    equivalents = load_equivalents()
    failed = []
    report = []
    for name in names:
        codes: dict[str, int | None] = {}
        for f in _module_files([name])[name]:
            meta = work / name / "mutants" / (f + ".meta")
            if meta.exists():
                codes.update(json.loads(meta.read_text())["exit_code_by_key"])
        unchecked = sum(c is None for c in codes.values())
        total = sum(c in KILLED or c in SURVIVED for c in codes.values())
        killed = sum(c in KILLED for c in codes.values())
        survivors = sorted(k for k, c in codes.items() if c in SURVIVED)
        listed = [k for k in survivors if k in equivalents]
        unlisted = [k for k in survivors if k not in equivalents]
        score = 100.0 * killed / total if total else 100.0
        cap = 100.0 * len(listed) / total if total else 0.0
        report.append((name, total, killed, listed, unlisted, score, cap))
        if unchecked:
            print(f"{name}: {unchecked} mutants not checked yet")
        if score < fail_under or cap > EQUIVALENT_CAP:
            failed.append(name)
    print(f"\n{'module':16s} {'mutants':>7s} {'killed':>7s} {'equiv':>6s} {'unlisted':>8s} "
          f"{'score':>7s} {'time':>6s}")
    for name, total, killed, listed, unlisted, score, cap in report:
        print(f"{name:16s} {total:7d} {killed:7d} {len(listed):6d} {len(unlisted):8d} "
              f"{score:6.1f}% {seconds[name]:5.0f}s"
              + ("  (equivalents over 5%)" if cap > EQUIVALENT_CAP else ""))
    for name, _, _, listed, unlisted, _, _ in report:
        diffs = _diffs(work / name, unlisted) if show_diffs else {}
        for k in listed:
            print(f"\nequivalent {k}: {equivalents[k]['why']}")
        for k in unlisted:
            print(f"\nSURVIVED {k}")
            print("\n".join(line for line in diffs.get(k, "").splitlines()
                            if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))))
    print(f"\n{time.perf_counter() - start:.0f}s; scores counted with the equivalent mutants "
          f"as survivors; goal: at least {fail_under:g}% per module")
    if workdir is None and not stopped:
        shutil.rmtree(work, ignore_errors=True)
    return 2 if stopped else 1 if failed else 0


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Mutation testing of the algorithm modules (see the module docstring).")
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help=f"modules for mutmut (default: all of {' '.join(MODULES)})")
    parser.add_argument("--curated", action="store_true",
                        help="run the curated list of realistic bugs instead of mutmut")
    parser.add_argument("--file", type=Path, default=CURATED, help="the curated list")
    parser.add_argument("--only", nargs="+", default=(), metavar="ID",
                        help="with --curated: only these mutants")
    parser.add_argument("--list", action="store_true", help="list the curated mutants")
    parser.add_argument("--jobs", type=int, default=2, help="parallel test runs (default 2)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds per curated mutant before it counts as killed")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the run of the unmutated tests before the curated list")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="mutmut's scratch copy (kept; default a temporary folder)")
    parser.add_argument("--resume", action="store_true",
                        help="with --workdir: go on with an interrupted mutmut run there")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fail-under", type=float, default=FAIL_UNDER,
                        help="exit 1 when a module's score is below this percentage")
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return 0
    if args.list:
        for m in load_curated(args.file):
            print(f"{m.id:32s} {m.file:34s} {m.why}")
        return 0
    if args.curated:
        if args.modules:
            parser.error("--curated takes no modules (use --only ID ...)")
        return run_curated(args.file, args.only, args.jobs, args.timeout, not args.no_baseline)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(MODULES)}")
    return run_mutmut(args.modules or DEFAULT_MODULES, args.jobs, args.workdir,
                      args.fail_under, resume=args.resume)


if __name__ == "__main__":
    sys.exit(main())
