import pickle
import re
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tl_course.features import Features, embed_2d, extract_features, linear_probe, sklearn_probe
from tl_course.models import DigitCNN


class CountingNet(nn.Module):
    """A tiny model (no `features` method) that counts its forward calls."""

    def __init__(self, dim_in: int = 4, dim_out: int = 3, dropout: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.drop = nn.Dropout(dropout)
        self.lin = nn.Linear(dim_in, dim_out)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.lin(self.drop(x))


def _loader(n: int = 10, dim: int = 4, batch_size: int = 4) -> DataLoader:
    gen = torch.Generator().manual_seed(1)
    ds = TensorDataset(torch.randn(n, dim, generator=gen), torch.arange(n) % 3)
    return DataLoader(ds, batch_size=batch_size)


def _separable(n_per_class: int = 30, dim: int = 8, classes: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(classes, dim) * 6
    y = torch.arange(classes).repeat(n_per_class)
    x = centres[y] + 0.5 * torch.randn(len(y), dim, generator=gen)
    return Features(x, y)


# ----------------------------------------------------------------- extract_features


def test_extract_features_shape_labels_and_values(cpu):
    model = CountingNet()
    loader = _loader(n=10, batch_size=4)
    feats = extract_features(model, loader, cpu)
    xs = torch.cat([x for x, _ in loader])
    ys = torch.cat([y for _, y in loader])
    assert feats.x.shape == (10, 3) and feats.dim == 3 and len(feats) == 10
    assert torch.equal(feats.y, ys)
    with torch.no_grad():
        assert torch.allclose(feats.x, model.lin(xs))
    assert model.calls == 3  # one pass, one call per batch
    assert not feats.x.requires_grad


def test_extract_features_uses_the_features_method(cpu):
    model = DigitCNN(num_classes=5, width=4)
    ds = TensorDataset(torch.rand(6, 1, 28, 28), torch.arange(6) % 5)
    feats = extract_features(model, DataLoader(ds, batch_size=4), cpu)
    assert feats.x.shape == (6, model.feature_dim)  # the embedding, not the 5 logits


def test_extract_features_is_deterministic_in_eval_mode(cpu):
    model = CountingNet(dropout=0.5).train()
    first = extract_features(model, _loader(), cpu)
    second = extract_features(model, _loader(), cpu)
    assert torch.equal(first.x, second.x) and torch.equal(first.y, second.y)
    assert not model.training


def test_extract_features_flattens_outputs(cpu):
    model = nn.Sequential(nn.Linear(4, 6), nn.Unflatten(1, (2, 3)))
    feats = extract_features(model, _loader(n=5), cpu)
    assert feats.x.shape == (5, 6)


def test_extract_features_cache_is_written_and_reused(cpu, tmp_path):
    cache = tmp_path / "cache" / "feats.pt"
    model = CountingNet()
    first = extract_features(model, _loader(), cpu, cache=cache)
    calls = model.calls
    assert calls > 0 and cache.is_file()
    # The cache holds plain tensors: it loads with weights_only.
    data = torch.load(cache, weights_only=True)
    assert torch.equal(data["x"], first.x) and torch.equal(data["y"], first.y)
    # Only the cache file in its folder: no temp file left behind.
    assert [p.name for p in cache.parent.iterdir()] == ["feats.pt"]

    second = extract_features(model, _loader(), cpu, cache=cache)
    assert model.calls == calls  # the model was not run again
    assert torch.equal(second.x, first.x) and torch.equal(second.y, first.y)


def test_extract_features_cache_is_written_atomically(cpu, tmp_path, monkeypatch):
    cache = tmp_path / "feats.pt"
    real_save = torch.save
    seen = []

    def save(obj, f, *args, **kwargs):
        seen.append(str(f))
        assert not cache.exists()  # never written in place
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    extract_features(CountingNet(), _loader(), cpu, cache=cache)
    assert seen and all(s != str(cache) for s in seen)
    assert all(s.startswith(str(tmp_path)) for s in seen)  # same folder: rename is atomic
    assert cache.is_file()


def test_extract_features_failed_write_leaves_nothing(cpu, tmp_path, monkeypatch):
    cache = tmp_path / "feats.pt"

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        extract_features(CountingNet(), _loader(), cpu, cache=cache)
    assert not cache.exists()
    assert list(tmp_path.iterdir()) == []  # the temp file is cleaned up too


def test_extract_features_empty_loader(cpu, tmp_path):
    cache = tmp_path / "feats.pt"
    with pytest.raises(ValueError, match="empty"):
        extract_features(CountingNet(), [], cpu, cache=cache)
    assert not cache.exists()


# ----------------------------------------------------------------- probes


def test_linear_probe_learns_separable_features(cpu):
    train, val = _separable(seed=0), _separable(seed=1)
    head, history = linear_probe(train, val, num_classes=3, device=cpu, epochs=15, lr=0.05)
    assert isinstance(head, nn.Linear) and head.in_features == 8 and head.out_features == 3
    assert history.epochs == 15
    assert history.last("val_acc") >= 0.95
    with torch.no_grad():
        acc = (head(val.x).argmax(1) == val.y).float().mean().item()
    assert acc >= 0.95


def test_linear_probe_is_seeded(cpu):
    train = _separable()
    a, _ = linear_probe(train, None, 3, cpu, epochs=2, seed=3)
    b, _ = linear_probe(train, None, 3, cpu, epochs=2, seed=3)
    assert torch.equal(a.weight, b.weight)


def test_linear_probe_rejects_mismatched_dims(cpu):
    train = _separable(dim=8)
    val = _separable(dim=5)
    with pytest.raises(ValueError, match="8.*5"):
        linear_probe(train, val, 3, cpu, epochs=1)


def test_sklearn_probe_on_separable_data():
    clf, acc = sklearn_probe(_separable(seed=0), _separable(seed=1))
    assert acc >= 0.95
    assert clf.predict(_separable(seed=2).x.numpy()).shape == (90,)


def test_sklearn_probe_reports_chance_on_shuffled_labels():
    test = _separable(seed=1)
    wrong = Features(test.x, (test.y + 1) % 3)  # every label off by one
    _, acc = sklearn_probe(_separable(seed=0), wrong)
    assert acc <= 0.05


# ----------------------------------------------------------------- embed_2d


def test_embed_2d_pca_keeps_a_plane_exactly():
    gen = torch.Generator().manual_seed(0)
    plane = torch.linalg.qr(torch.randn(10, 2, generator=gen)).Q.T  # 2 orthonormal rows
    coords = torch.randn(20, 2, generator=gen) * 3
    feats = Features(coords @ plane + 5.0, torch.zeros(20, dtype=torch.long))
    out = embed_2d(feats, "pca")
    assert out.shape == (20, 2)
    # A rotation (and reflection) of the original 2-D points: distances are preserved.
    assert torch.allclose(torch.cdist(out.double(), out.double()),
                          torch.cdist(coords.double(), coords.double()), atol=1e-4)


def test_embed_2d_tsne_shape_and_seed():
    feats = _separable(n_per_class=8)
    a = embed_2d(feats, "tsne", seed=0)
    b = embed_2d(feats, "tsne", seed=0)
    assert a.shape == (24, 2) and torch.isfinite(a).all()
    assert torch.equal(a, b)


def test_embed_2d_unknown_method():
    with pytest.raises(ValueError, match="umap.*tsne.*pca"):
        embed_2d(_separable(), "umap")


# ----------------------------------------------------------------- knn_accuracy


def _knn_reference(x, y, k):
    """Brute force, written independently: standardise, loop over points, majority vote."""
    import numpy as np

    x = x.numpy().astype(float)
    x = (x - x.mean(0)) / x.std(0, ddof=1)
    y = y.numpy()
    right = 0
    for i in range(len(x)):
        d = ((x - x[i]) ** 2).sum(1)
        d[i] = np.inf
        nearest = np.argsort(d, kind="stable")[:k]
        votes = np.bincount(y[nearest], minlength=y.max() + 1)
        right += int(votes.argmax() == y[i])
    return right / len(x)


def test_knn_accuracy_matches_a_brute_force_reference():
    from tl_course.features import knn_accuracy

    gen = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randn(60, 5, generator=gen) + 1.5 * torch.nn.functional.one_hot(y, 5)
    for k in (1, 3, 5):
        assert knn_accuracy(Features(x, y), k) == pytest.approx(_knn_reference(x, y, k))


def test_knn_accuracy_excludes_the_point_itself():
    from tl_course.features import knn_accuracy

    # Every point's class is unique among its neighbours: with itself counted it would be 1.
    x = torch.arange(6, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    assert knn_accuracy(Features(x, y), k=1) == 0.0


def test_knn_accuracy_standardises_each_feature():
    from tl_course.features import knn_accuracy

    gen = torch.Generator().manual_seed(1)
    y = torch.arange(40) % 2
    informative = y.float().unsqueeze(1) + 0.1 * torch.randn(40, 1, generator=gen)
    noise = torch.randn(40, 1, generator=gen)
    # A huge scale on the noise would swamp the informative feature without standardising.
    x = torch.cat([informative, 1000 * noise], 1)
    assert knn_accuracy(Features(x, y), k=3) == pytest.approx(
        knn_accuracy(Features(torch.cat([informative, noise], 1), y), k=3))


def test_knn_accuracy_rejects_bad_k():
    from tl_course.features import knn_accuracy

    with pytest.raises(ValueError, match="k must be"):
        knn_accuracy(Features(torch.zeros(4, 2), torch.zeros(4).long()), k=4)


# ----------------------------------------------------------------- defining properties (issue 17)


def test_features_for_probes_are_extracted_in_eval_mode_with_batchnorm(cpu):
    """A model with BatchNorm and dropout in train mode: the features are those of the
    eval-mode model, batch by batch alike, and the running statistics do not move."""
    torch.manual_seed(0)
    model = DigitCNN(num_classes=5, width=4, dropout=0.5).train()
    x = torch.rand(10, 1, 28, 28) * 4
    loader = DataLoader(TensorDataset(x, torch.arange(10) % 5), batch_size=3)
    buffers = [b.clone() for b in model.buffers()]
    feats = extract_features(model, loader, cpu)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
    with torch.no_grad():
        want = model.eval().features(x)
    assert torch.allclose(feats.x, want, atol=1e-6)


def test_linear_probe_trains_only_a_linear_head_with_weight_decay(cpu):
    train = _separable(seed=0)
    plain, _ = linear_probe(train, None, 3, cpu, epochs=10, lr=0.05, weight_decay=0.0)
    decayed, _ = linear_probe(train, None, 3, cpu, epochs=10, lr=0.05, weight_decay=5.0)
    assert decayed.weight.norm() < 0.8 * plain.weight.norm()
    other, _ = linear_probe(train, None, 3, cpu, epochs=2, seed=4)
    again, _ = linear_probe(train, None, 3, cpu, epochs=2, seed=3)
    assert not torch.equal(other.weight, again.weight)  # the seed is used


def test_linear_probe_reports_validation_on_the_given_val_set(cpu):
    train, val = _separable(seed=0), _separable(seed=1)
    wrong = Features(val.x, (val.y + 1) % 3)
    head, history = linear_probe(train, wrong, 3, cpu, epochs=10, lr=0.05)
    with torch.no_grad():
        want = (head(wrong.x).argmax(1) == wrong.y).float().mean().item()
    assert history.last("val_acc") == pytest.approx(want)
    assert history.last("val_acc") < 0.1 and history.last("train_acc") > 0.9


# ----------------------------------------------------------------- reference reproductions


_TAMPERED = []


def _tampered_payload():
    _TAMPERED.append(True)
    return torch.zeros(2, 1)


class _Payload:
    """Unpickles by calling a function: what a tampered cache file could do."""

    def __reduce__(self):
        return (_tampered_payload, ())


def test_extract_features_cache_never_runs_pickled_code(cpu, tmp_path, monkeypatch):
    """The cache is loaded with weights_only=True whatever torch's default is: a tampered
    cache file raises instead of running code (and the model is not run either)."""
    # torch < 2.6 (the floor is 2.4) loads full pickles unless weights_only=True is passed.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    _TAMPERED.clear()
    cache = tmp_path / "feats.pt"
    torch.save({"x": _Payload(), "y": torch.zeros(2, dtype=torch.long)}, cache)
    model = CountingNet()
    with pytest.raises(pickle.UnpicklingError):
        extract_features(model, _loader(), cpu, cache=cache)
    assert _TAMPERED == [] and model.calls == 0


def test_extract_features_moves_the_model_to_the_device(cpu, monkeypatch):
    """The model is put on the given device before the pass (not left where it was)."""
    model = CountingNet()
    real_to, seen = model.to, []

    def to(*args, **kwargs):
        seen.append(args[0] if args else kwargs.get("device"))
        return real_to(*args, **kwargs)

    monkeypatch.setattr(model, "to", to)
    extract_features(model, _loader(), cpu)
    assert seen and all(torch.device(d) == cpu for d in seen)


def _probe_reference(train, num_classes, epochs=20, lr=1e-2, weight_decay=1e-4,
                     batch_size=256, seed=0):
    """A bare linear probe: seeded nn.Linear, AdamW, cross-entropy, seeded shuffled batches."""
    torch.manual_seed(seed)
    head = nn.Linear(train.x.shape[1], num_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    order = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(train.x, train.y), batch_size=batch_size, shuffle=True,
                        generator=order)
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(xb), yb).backward()
            opt.step()
    return head


def test_linear_probe_matches_a_bare_training_loop_at_its_defaults(cpu):
    """Defaults by behaviour: 20 epochs of AdamW(lr 1e-2, weight decay 1e-4) on shuffled
    batches of 256 drawn with seed 0, from a head initialised under the same seed."""
    gen = torch.Generator().manual_seed(2)
    y = torch.arange(300) % 3
    x = torch.randn(300, 4, generator=gen) + torch.nn.functional.one_hot(y, 4)
    train = Features(x, y)  # more than one batch of 256, so batch size and order matter
    head, history = linear_probe(train, None, 3, cpu)
    want = _probe_reference(train, 3)
    assert history.epochs == 20
    assert torch.allclose(head.weight, want.weight, atol=1e-6)
    assert torch.allclose(head.bias, want.bias, atol=1e-6)


def test_linear_probe_progress_bar_is_opt_in(cpu, capsys):
    """No progress output by default; with progress=True a bar labelled 'probe'."""
    train = _separable(n_per_class=4)
    capsys.readouterr()
    linear_probe(train, None, 3, cpu, epochs=1)
    assert capsys.readouterr().err == ""
    linear_probe(train, None, 3, cpu, epochs=1, progress=True)
    assert re.search(r"(^|\r)probe: ", capsys.readouterr().err)


def _logreg_reference(train, test, c, max_iter):
    """Standardise with the training mean and (population) std, then plain LogisticRegression."""
    from sklearn.linear_model import LogisticRegression

    xtr, xte = train.x.numpy(), test.x.numpy()
    mean, std = xtr.mean(0), xtr.std(0)
    model = LogisticRegression(C=c, max_iter=max_iter).fit((xtr - mean) / std, train.y.numpy())
    return model.predict_proba((xte - mean) / std)


def test_sklearn_probe_is_logistic_regression_on_standardised_features():
    """C=1 by default and the given C / max_iter used, on features standardised with the
    training statistics (the features here have very different scales)."""
    import numpy as np

    gen = torch.Generator().manual_seed(3)
    scales = torch.tensor([1.0, 20.0, 0.05, 5.0], dtype=torch.float64)

    def noisy(n):
        y = torch.arange(n) % 3
        x = torch.randn(n, 4, generator=gen, dtype=torch.float64) + torch.nn.functional.one_hot(
            y, 4).double()
        return Features(x * scales + 3.0, y)

    train, test = noisy(90), noisy(30)
    clf, acc = sklearn_probe(train, test)
    want = _logreg_reference(train, test, c=1.0, max_iter=2000)
    np.testing.assert_allclose(clf.predict_proba(test.x.numpy()), want, atol=1e-5)
    assert acc == pytest.approx(float((want.argmax(1) == test.y.numpy()).mean()))
    for c, max_iter in ((0.01, 2000), (1.0, 3)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 3 iterations do not converge, on purpose
            clf, _ = sklearn_probe(train, test, c=c, max_iter=max_iter)
            want = _logreg_reference(train, test, c=c, max_iter=max_iter)
        np.testing.assert_allclose(clf.predict_proba(test.x.numpy()), want, atol=1e-5)


def test_knn_accuracy_defaults_to_five_neighbours():
    """k=5 by default (checked on data where 5 and 6 neighbours give different accuracies)."""
    from tl_course.features import knn_accuracy

    gen = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randn(60, 5, generator=gen) + 1.5 * torch.nn.functional.one_hot(y, 5)
    assert _knn_reference(x, y, 5) != _knn_reference(x, y, 6)
    assert knn_accuracy(Features(x, y)) == pytest.approx(_knn_reference(x, y, 5))


def test_knn_accuracy_centres_features_far_from_the_origin():
    """Each feature is centred before distances are taken: features with large offsets
    (different per feature) give the accuracy of the same features around zero."""
    from tl_course.features import knn_accuracy

    gen = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randn(60, 5, generator=gen, dtype=torch.float64)
    x = x + 1.5 * torch.nn.functional.one_hot(y, 5).double()
    offsets = 1e8 * torch.tensor([1.0, -3.0, 5.0, 2.0, -7.0], dtype=torch.float64)
    assert knn_accuracy(Features(x + offsets, y), 5) == pytest.approx(_knn_reference(x, y, 5))


def _tsne_reference(x, seed=0):
    """scikit-learn's t-SNE at the documented settings: 2-D, PCA init, 500 iterations,
    perplexity 30 lowered to a quarter of the other points on small sets, but at least 5."""
    from sklearn.manifold import TSNE

    perplexity = min(30.0, max(5.0, (len(x) - 1) / 4))
    tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed,
                max_iter=500)
    return torch.as_tensor(tsne.fit_transform(x.numpy()))


@pytest.mark.parametrize("n, dim", [(16, 6), (41, 6), (130, 6), (20, 600)])
def test_embed_2d_defaults_to_seeded_tsne(n, dim):
    """The default method is t-SNE with seed 0, reproduced exactly; the sizes cover the
    perplexity floor (16 points), the (n - 1) / 4 rule (41) and the cap at 30 (130)."""
    gen = torch.Generator().manual_seed(n)
    y = torch.arange(n) % 3
    x = torch.randn(n, dim, generator=gen)
    x[:, :3] += 2 * torch.nn.functional.one_hot(y, 3)
    assert torch.equal(embed_2d(Features(x, y)), _tsne_reference(x))


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embed_2d_uses_its_seed(method):
    """Wide features (randomised PCA): the same seed gives the same map, another seed another."""
    gen = torch.Generator().manual_seed(0)
    feats = Features(torch.randn(20, 600, generator=gen), torch.arange(20) % 2)
    first = embed_2d(feats, method, seed=0)
    assert torch.equal(first, embed_2d(feats, method, seed=0))
    assert not torch.equal(first, embed_2d(feats, method, seed=1))
