"""Shared fixtures: a hermetic environment for every test, tiny data, a fake MNIST cache."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

import tl_course.data  # noqa: E402
from tl_course.data import DATA_ENV  # noqa: E402
from tl_course.device import DEVICE_ENV  # noqa: E402
from tl_course.profile import PROFILE_ENV  # noqa: E402
from tl_course.runcard import RUNCARD_ENV  # noqa: E402

# Tiny models gain nothing from threads, and on a busy 2-core machine torch's spinning
# worker threads make them ~100x slower (notebook kernels get OMP_NUM_THREADS=1 likewise).
torch.set_num_threads(1)


def _unset(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # setenv first so that teardown restores the original value even when the code
    # under test (e.g. the CLI) sets the variable again in os.environ.
    monkeypatch.setenv(name, "placeholder")
    monkeypatch.delenv(name)


def _protect(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Keep `name` as it is, but restore it at teardown whatever the test does to it."""
    if name in os.environ:
        monkeypatch.setenv(name, os.environ[name])
    else:
        _unset(monkeypatch, name)


@pytest.fixture(autouse=True)
def hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Every test: no run card, no forced device, empty data / weights caches, no network."""
    _unset(monkeypatch, RUNCARD_ENV)
    _unset(monkeypatch, DEVICE_ENV)
    _protect(monkeypatch, PROFILE_ENV)
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "tl-course-data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached weights
    # Unit tests never download; tests that care about the network patch this again.
    monkeypatch.setattr(tl_course.data, "network_available", lambda *a, **k: False)
    yield
    plt.close("all")


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A fresh, empty data cache folder (the one TL_COURSE_DATA points at)."""
    root = tmp_path / "tl-course-data"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture
def cpu() -> torch.device:
    return torch.device("cpu")


@pytest.fixture
def tiny_digits() -> TensorDataset:
    """64 random 28x28 'images' in [0, 1] with labels 0..9 (deterministic)."""
    gen = torch.Generator().manual_seed(123)
    x = torch.rand(64, 1, 28, 28, generator=gen)
    y = torch.arange(64) % 10
    return TensorDataset(x, y)


def write_idx_images(path: Path, images: torch.Tensor) -> None:
    """Write uint8 images (N, 28, 28) in the idx3 format (magic 2051, big endian)."""
    n, h, w = images.shape
    header = struct.pack(">IIII", 2051, n, h, w)
    path.write_bytes(header + images.to(torch.uint8).numpy().tobytes())


def write_idx_labels(path: Path, labels: torch.Tensor) -> None:
    """Write uint8 labels (N,) in the idx1 format (magic 2049, big endian)."""
    header = struct.pack(">II", 2049, len(labels))
    path.write_bytes(header + labels.to(torch.uint8).numpy().tobytes())


def write_fake_mnist(root: Path, n_train: int = 20, n_test: int = 10) -> tuple[torch.Tensor, ...]:
    """Put a tiny MNIST in `root`/MNIST/raw under the file names torchvision reads.

    Returns (train_images, train_labels, test_images, test_labels) as uint8 tensors.
    """
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(7)
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8)
        labels = (torch.arange(n) % 10).to(torch.uint8)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out += [images, labels]
    return tuple(out)


@pytest.fixture
def mnist_writer():
    """write_fake_mnist, as a fixture (a root conftest.py makes `import conftest` ambiguous)."""
    return write_fake_mnist


@pytest.fixture
def fake_mnist(data_root: Path) -> tuple[Path, tuple[torch.Tensor, ...]]:
    """A tiny fake MNIST written into the data cache: (root, tensors)."""
    return data_root, write_fake_mnist(data_root)


@pytest.fixture
def trusted_checksums(monkeypatch):
    """Treat fake cached files as intact: the fakes stand in for real downloads, whose
    checksums they cannot match. Tests of the checksum logic itself do not use this."""
    import tl_course.cli
    import tl_course.data
    import tl_course.models
    import tl_course.photos

    monkeypatch.setattr(tl_course.data, "mnist_intact", tl_course.data.mnist_cached)
    monkeypatch.setattr(tl_course.photos, "eurosat_intact", tl_course.photos.eurosat_cached)
    monkeypatch.setattr(tl_course.models, "weights_intact", tl_course.models.weights_cached)
    monkeypatch.setattr(tl_course.cli, "weights_intact", tl_course.models.weights_cached)


# ----------------------------------------------------------------- headless Chromium

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    """Debian's chromium (or TL_COURSE_CHROMIUM); fails the test with the fix when missing."""
    path = os.environ.get("TL_COURSE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Chromium is missing: install it (Debian/Ubuntu: `apt-get install -y "
                    "chromium`) or point TL_COURSE_CHROMIUM at a Chromium binary")
    return path


@pytest.fixture(scope="module")
def browser(request, tmp_path_factory):
    """A Playwright context on the system Chromium (never a downloaded browser).

    A test module may set BROWSER_VIEWPORT; missing Playwright or Chromium fails the test
    with the install command instead of skipping it.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: `pip install playwright` (the system "
                    "Chromium is used, so `playwright install` is not needed)")
    viewport = getattr(request.module, "BROWSER_VIEWPORT", {"width": 1280, "height": 800})
    executable = chromium_path()
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=executable,
            headless=True, args=CHROMIUM_ARGS, viewport=viewport)
        yield context
        context.close()


@pytest.fixture
def one_error_line():
    """Check that stderr is exactly one `tl-course: error:` line, no traceback; return it."""
    def check(err: str) -> str:
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("tl-course: error:")
        assert "Traceback" not in err
        return lines[0]

    return check
