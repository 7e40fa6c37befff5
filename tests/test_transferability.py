"""tl_course.transferability: LogME, LEEP, H-score, CV probe and rank agreement against
independent references and known values; the source ladder's transforms and its cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.stats import kendalltau, spearmanr
from sklearn.covariance import LedoitWolf
from torch.utils.data import TensorDataset

from tl_course.transferability import (
    RUNGS,
    cached_source,
    cv_probe,
    h_score,
    ladder,
    ladder_sources,
    leep,
    logme,
    new_encoder,
    rank_agreement,
    rotate,
    source_probs,
    train_source,
    transform,
)

CPU = torch.device("cpu")


# --------------------------------------------------------------------------- references


def reference_log_evidence(f: np.ndarray, y: np.ndarray) -> float:
    """max over (alpha, beta) of the log evidence L of You et al. (2021), with the full
    D x D matrices, found by direct numerical optimisation (no fixed point, no SVD)."""
    n, d = f.shape
    ftf, fty = f.T @ f, f.T @ y

    def neg_evidence(params: np.ndarray) -> float:
        alpha, beta = np.exp(params)
        a = alpha * np.eye(d) + beta * ftf
        m = beta * np.linalg.solve(a, fty)
        _, logdet = np.linalg.slogdet(a)
        ev = (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
              - beta / 2 * np.sum((f @ m - y) ** 2) - alpha / 2 * m @ m - logdet / 2)
        return -ev

    # With fewer images than dimensions a one-vs-rest target is fitted exactly and the
    # evidence climbs towards its supremum as beta -> infinity; past beta ~ e^25 the
    # full-matrix arithmetic is rounding noise, so the search stops at e^20 (within 1e-8
    # per image of the supremum here).
    bounds = [(-15.0, 15.0), (-15.0, 20.0)]
    best = min((minimize(neg_evidence, np.array(start), method="Nelder-Mead", bounds=bounds,
                         options={"xatol": 1e-9, "fatol": 1e-11, "maxiter": 4000})
                for start in [(0.0, 0.0), (3.0, -3.0), (-3.0, 3.0)]), key=lambda r: r.fun)
    return -best.fun


def reference_logme(f: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of the one-vs-rest maximised evidence, per image."""
    return float(np.mean([reference_log_evidence(f, (labels == c).astype(float)) / len(f)
                          for c in np.unique(labels)]))


def reference_leep(p: np.ndarray, labels: np.ndarray) -> float:
    """Nguyen et al. (2020) with explicit loops: P(y, z), P(z), P(y | z), then the mean
    log of the expected empirical prediction of each image's label."""
    n, nz = p.shape
    classes = sorted(set(labels.tolist()))
    joint = {(y, z): sum(p[i, z] for i in range(n) if labels[i] == y) / n
             for y in classes for z in range(nz)}
    pz = {z: sum(joint[y, z] for y in classes) for z in range(nz)}
    total = 0.0
    for i in range(n):
        eep = sum(joint[labels[i], z] / pz[z] * p[i, z] for z in range(nz) if pz[z] > 0)
        total += math.log(eep)
    return total / n


def reference_h_score(f: np.ndarray, labels: np.ndarray) -> float:
    """tr(pinv(cov f) cov g), g each row replaced by its class mean, 1/n covariances."""
    g = np.stack([f[labels == y].mean(0) for y in labels])
    cov_f = np.cov(f, rowvar=False, bias=True)
    cov_g = np.cov(g, rowvar=False, bias=True)
    return float(np.trace(np.linalg.pinv(cov_f) @ cov_g))


def blobs(n_per: int, classes: int, dims: int, spread: float, seed: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian class clusters around random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dims)) * 3
    y = np.repeat(np.arange(classes), n_per)
    return centres[y] + spread * rng.normal(size=(len(y), dims)), y


# --------------------------------------------------------------------------- LogME


@pytest.mark.parametrize("n, d", [(60, 8), (20, 50)], ids=["n>D", "n<D"])
def test_logme_matches_direct_maximisation_of_the_evidence(n, d):
    """The SVD fixed point reaches the maximum of the full-matrix evidence, whether there
    are more images than dimensions or fewer."""
    rng = np.random.default_rng(n + d)
    labels = np.arange(n) % 3
    f = rng.normal(size=(n, d)) + 0.8 * np.eye(3)[labels] @ rng.normal(size=(3, d))
    assert logme(f, labels) == pytest.approx(reference_logme(f, labels), abs=1e-5)


def test_logme_accepts_tensors_and_arbitrary_label_values():
    """Torch inputs and labels like 5..9 give the same score as numpy and 0..C-1."""
    f, y = blobs(15, 3, 6, 1.0, seed=1)
    expected = logme(f, y)
    assert logme(torch.tensor(f, dtype=torch.float64), torch.tensor(y + 5)) == pytest.approx(
        expected, rel=1e-9)


def test_logme_prefers_separable_features_to_noise():
    """Features that separate the classes score higher than noise of the same size."""
    rng = np.random.default_rng(0)
    labels = np.arange(90) % 3
    separable = np.eye(3)[labels] + 0.05 * rng.normal(size=(90, 3))
    separable = np.hstack([separable, rng.normal(size=(90, 7))])
    noise = rng.normal(size=(90, 10))
    assert logme(separable, labels) > logme(noise, labels) + 0.5


# --------------------------------------------------------------------------- LEEP


def test_leep_matches_the_loop_reference():
    """Random softmax outputs (5 source classes) and 3 target classes, labels 7..9."""
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5) * 0.7, size=40)
    labels = rng.integers(7, 10, size=40)
    assert leep(p, labels) == pytest.approx(reference_leep(p, labels), rel=1e-10)
    assert leep(torch.tensor(p), torch.tensor(labels)) == pytest.approx(
        reference_leep(p, labels), rel=1e-10)


def test_leep_constant_head_on_balanced_target_is_log_one_over_c():
    """A head that says the same for every image predicts nothing: log(1/C)."""
    p = np.tile([0.1, 0.6, 0.3], (40, 1))
    labels = np.arange(40) % 4
    assert leep(p, labels) == pytest.approx(math.log(1 / 4), rel=1e-10)


def test_leep_constant_head_on_imbalanced_target_is_mean_log_frequency():
    """On an imbalanced target it is the mean log class frequency, not log(1/C)."""
    labels = np.array([0] * 30 + [1] * 10)
    p = np.tile([0.5, 0.5], (40, 1))
    expected = (30 * math.log(30 / 40) + 10 * math.log(10 / 40)) / 40
    assert leep(p, labels) == pytest.approx(expected, rel=1e-10)
    assert leep(p, labels) != pytest.approx(math.log(1 / 2), rel=1e-3)


def test_leep_of_a_certain_head_that_maps_one_to_one_is_zero():
    """One-hot source predictions in bijection with the target labels: log 1 = 0."""
    labels = np.arange(30) % 3
    z = (labels + 1) % 3  # source class z = a relabelling of the target class
    p = np.eye(3)[z]
    assert leep(p, labels) == pytest.approx(0.0, abs=1e-12)


def test_leep_refuses_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20, 4))
    with pytest.raises(ValueError, match="softmax"):
        leep(logits, np.arange(20) % 2)


# --------------------------------------------------------------------------- H-score


def test_h_score_without_shrinkage_matches_numpy_reference():
    f, y = blobs(20, 4, 6, 2.0, seed=3)
    assert h_score(f, y, shrinkage=False) == pytest.approx(reference_h_score(f, y), rel=1e-8)


def test_h_score_with_shrinkage_matches_sklearn_ledoit_wolf():
    """The Ledoit-Wolf covariance from sklearn, computed here, and an exact inverse."""
    f, y = blobs(10, 3, 25, 2.0, seed=4)  # 30 images, 25 dims
    g = np.stack([f[y == c].mean(0) for c in y])
    cov_g = np.cov(g, rowvar=False, bias=True)
    cov_f = LedoitWolf().fit(f).covariance_
    expected = float(np.trace(np.linalg.inv(cov_f) @ cov_g))
    assert h_score(f, y, shrinkage=True) == pytest.approx(expected, rel=1e-8)
    assert h_score(f, y) == pytest.approx(expected, rel=1e-8)  # shrinkage is the default


def test_h_score_of_class_indicator_features_is_c_minus_one():
    """One-hot class features plus tiny noise: all the spread is between classes, and
    the trace counts the C-1 directions the class means span."""
    rng = np.random.default_rng(5)
    c = 4
    labels = np.arange(400) % c
    f = np.eye(c)[labels] + 1e-3 * rng.normal(size=(400, c))
    assert h_score(f, labels, shrinkage=False) == pytest.approx(c - 1, abs=0.05)


def test_h_score_with_shrinkage_stays_finite_with_more_dims_than_images():
    f, y = blobs(5, 2, 40, 1.0, seed=6)
    assert np.isfinite(h_score(f, y, shrinkage=True))


# --------------------------------------------------------------------------- CV probe


def test_cv_probe_scores_separable_features_one():
    f, y = blobs(10, 3, 4, 0.05, seed=7)
    assert cv_probe(f, y) == 1.0


def test_cv_probe_refuses_a_class_with_one_image():
    f, y = blobs(10, 3, 4, 1.0, seed=8)
    y = y.copy()
    y[0] = 9  # class 9 has a single image
    with pytest.raises(ValueError, match="at least 2"):
        cv_probe(f, y)


# --------------------------------------------------------------------------- degenerate inputs

FEATURE_SCORES = [logme, h_score, cv_probe, leep]


def _probs(n: int) -> np.ndarray:
    return np.random.default_rng(0).dirichlet(np.ones(3), size=n)


@pytest.mark.parametrize("score", FEATURE_SCORES, ids=lambda s: s.__name__)
def test_one_class_only_is_refused(score):
    with pytest.raises(ValueError, match="one class"):
        score(_probs(10), np.zeros(10, dtype=int))


@pytest.mark.parametrize("score", FEATURE_SCORES, ids=lambda s: s.__name__)
def test_mismatched_lengths_are_refused(score):
    with pytest.raises(ValueError, match="one label per row"):
        score(_probs(10), np.arange(12) % 2)


@pytest.mark.parametrize("score", FEATURE_SCORES, ids=lambda s: s.__name__)
def test_three_d_features_are_refused(score):
    with pytest.raises(ValueError, match="2-d"):
        score(np.ones((10, 2, 3)) / 6, np.arange(10) % 2)


@pytest.mark.parametrize("score", FEATURE_SCORES, ids=lambda s: s.__name__)
def test_nan_features_are_refused(score):
    p = _probs(10)
    p[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        score(p, np.arange(10) % 2)


@pytest.mark.parametrize("score", [logme, h_score], ids=lambda s: s.__name__)
def test_constant_features_are_refused(score):
    with pytest.raises(ValueError, match="same for every image"):
        score(np.full((10, 4), 0.3), np.arange(10) % 2)


# --------------------------------------------------------------------------- rank agreement


def test_rank_agreement_equals_scipy():
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=8), rng.normal(size=8)
    out = rank_agreement(a.tolist(), b.tolist())
    assert out["kendall"] == pytest.approx(kendalltau(a, b)[0], rel=1e-12)
    assert out["spearman"] == pytest.approx(spearmanr(a, b)[0], rel=1e-12)


def test_rank_agreement_of_reversed_order_is_minus_one():
    out = rank_agreement([1.0, 2.0, 3.0, 4.0], [0.9, 0.5, 0.3, 0.1])
    assert out == {"kendall": pytest.approx(-1.0), "spearman": pytest.approx(-1.0)}


@pytest.mark.parametrize("a, b", [([1.0, 2.0], [2.0, 1.0]), ([1.0, 2.0, 3.0], [1.0, 2.0])])
def test_rank_agreement_refuses_too_few_or_unpaired_values(a, b):
    with pytest.raises(ValueError, match="at least"):
        rank_agreement(a, b)


# --------------------------------------------------------------------------- ladder: rotate


def _blob_image(size: int = 28) -> torch.Tensor:
    """A smooth image: a Gaussian blob above the centre, on a faint ramp (1, 1, H, W)."""
    r = torch.arange(size, dtype=torch.float64).view(-1, 1)
    c = torch.arange(size, dtype=torch.float64).view(1, -1)
    img = torch.exp(-((r - 8) ** 2 + (c - 13.5) ** 2) / (2 * 2.5 ** 2)) + 0.01 * c
    return img.float().view(1, 1, size, size)


def test_rotate_by_multiples_of_90_is_rot90():
    x = torch.rand(3, 2, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rotate(x, 90), torch.rot90(x, 1, dims=(2, 3)))
    assert torch.equal(rotate(x, 180), torch.rot90(x, 2, dims=(2, 3)))
    assert torch.equal(rotate(x, -90), torch.rot90(x, 3, dims=(2, 3)))


def test_rotate_30_three_times_is_rotate_90_in_the_centre():
    """Rotations compose: three turns of 30 degrees are one of 90 (compared inside the
    central disk, where no corner was lost, with a loose tolerance for interpolation)."""
    x = _blob_image()
    thrice = rotate(rotate(rotate(x, 30), 30), 30)
    assert not torch.allclose(rotate(x, 30), x, atol=0.1)
    r = torch.arange(28).view(-1, 1) - 13.5
    c = torch.arange(28).view(1, -1) - 13.5
    centre = (r ** 2 + c ** 2) < 10 ** 2
    diff = (thrice - rotate(x, 90))[0, 0][centre].abs().max().item()
    assert diff < 0.1


def test_rotate_by_30_turns_anticlockwise_as_documented():
    """A blob above the centre moves towards the left (anticlockwise, like rot90): its
    centre of mass lands where turning (row, col) by +30 degrees about the centre puts it."""
    x = _blob_image()
    out = rotate(x, 30)[0, 0].double()
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    blob = out * (out > 0.5)  # the blob only (the ramp stays below 0.3)
    got = ((blob * rows).sum() / blob.sum(), (blob * cols).sum() / blob.sum())
    a = math.radians(30)
    dy, dx = 8 - 13.5, 0.0  # the blob's offset from the centre (rows down, cols right)
    # anticlockwise on screen (rows grow downwards): (dx, dy) -> (dx cos + dy sin, dy cos - dx sin)
    want = (13.5 + dy * math.cos(a) - dx * math.sin(a), 13.5 + dx * math.cos(a) + dy * math.sin(a))
    assert got[1].item() < 13.5  # moved to the left of the centre column
    assert got[0].item() == pytest.approx(want[0], abs=0.5)
    assert got[1].item() == pytest.approx(want[1], abs=0.5)


# --------------------------------------------------------------------------- ladder: transform


def _digits(n: int = 40, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % 5)


def test_transform_upright_and_inverted():
    ds = _digits()
    up = transform("upright", ds)
    assert torch.equal(up.tensors[0], ds.tensors[0]) and torch.equal(up.tensors[1], ds.tensors[1])
    inv = transform("inverted", ds)
    assert torch.equal(inv.tensors[0], 1 - ds.tensors[0])
    assert torch.equal(inv.tensors[1], ds.tensors[1])


def test_transform_rotated_uses_rotate():
    ds = _digits(6)
    x = ds.tensors[0]
    assert torch.equal(transform("rotated 90", ds).tensors[0], torch.rot90(x, 1, (2, 3)))
    assert torch.equal(transform("rotated 30", ds).tensors[0], rotate(ds.tensors[0], 30))


def test_transform_permuted_is_one_fixed_pixel_permutation():
    """The same permutation for every image and every call; pixels are only moved."""
    ds = _digits(8)
    a, b = transform("permuted", ds).tensors[0], transform("permuted", ds).tensors[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, ds.tensors[0])
    x = ds.tensors[0].flatten(1)
    assert torch.equal(a.flatten(1).sort(1).values, x.sort(1).values)
    # Recover the permutation from an image of distinct pixel values, apply it to all.
    probe = TensorDataset(torch.arange(784.0).view(1, 1, 28, 28), torch.zeros(1, dtype=torch.long))
    perm = transform("permuted", probe).tensors[0].flatten().long()
    assert torch.equal(a.flatten(1), x[:, perm])
    assert torch.equal(transform("permuted", ds).tensors[1], ds.tensors[1])


def test_transform_shuffled_labels_keeps_the_multiset_and_the_images():
    ds = _digits(40)
    out = transform("shuffled labels", ds)
    y, new = ds.tensors[1], out.tensors[1]
    assert torch.equal(out.tensors[0], ds.tensors[0])
    assert torch.equal(new.sort().values, y.sort().values)
    assert (new != y).float().mean() > 0.5
    assert torch.equal(transform("shuffled labels", ds).tensors[1], new)  # a fixed shuffle


def test_transform_unknown_rung_is_refused():
    with pytest.raises(ValueError, match="unknown rung"):
        transform("sideways", _digits(4))


# --------------------------------------------------------------------------- ladder: sources


def test_train_source_trains_a_five_class_encoder_in_eval_mode():
    ds = _digits(40)
    model = train_source("upright", ds, CPU, steps=2)
    fresh = new_encoder(5, 0)
    assert not model.training
    assert model.head[-1].out_features == 5
    before, after = fresh.state_dict(), model.state_dict()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_ladder_sources_saves_one_file_per_rung_and_loads_them_again(tmp_path, monkeypatch):
    ds = _digits(40)
    first = ladder_sources(ds, CPU, data_tag="t", steps=2, root=tmp_path)
    files = sorted((tmp_path / "models").glob("*.pt"))
    assert list(first) == list(RUNGS)
    assert len(files) == len(RUNGS)
    assert all("_t_st2_s0" in f.name for f in files)

    def no_training(*args, **kwargs):
        raise AssertionError("a cached source was trained again")

    monkeypatch.setattr(ladder, "train_source", no_training)
    monkeypatch.setattr(ladder, "train_on", no_training)
    second = ladder_sources(ds, CPU, data_tag="t", steps=2, root=tmp_path)
    for rung in RUNGS:
        a, b = first[rung].state_dict(), second[rung].state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), rung
        assert not second[rung].training


def test_cached_source_reloads_a_head_sized_for_its_data(tmp_path):
    """A 3-class source is saved, then loaded (not retrained) into a 3-class encoder."""
    g = torch.Generator().manual_seed(2)
    data = TensorDataset(torch.rand(24, 1, 28, 28, generator=g), torch.arange(24) % 3)
    first = cached_source("three", data, CPU, data_tag="t", steps=1, root=tmp_path)
    again = cached_source("three", data, CPU, data_tag="t", steps=1, root=tmp_path)
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["three_t_st1_s0.pt"]
    assert again.head[-1].out_features == 3 and not again.training
    a, b = first.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_source_probs_are_softmax_rows_in_eval_mode():
    model = new_encoder(5, 0)
    model.train()
    x = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(1))  # two batches
    p = source_probs(model, x, CPU)
    assert p.shape == (300, 5)
    assert torch.allclose(p.sum(1), torch.ones(300), atol=1e-5)
    assert not model.training
    with torch.no_grad():
        assert torch.allclose(p, torch.softmax(model(x), 1), atol=1e-6)


# --------------------------------------------------------------------------- evaluate


def _tiny_target(n_per_class: int = 12, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(5).repeat_interleave(n_per_class)
    x = torch.rand(len(y), 1, 28, 28, generator=gen) * 0.2
    for c in range(5):  # a class-specific bright bar, so the classes are learnable
        x[y == c, 0, 4 + 4 * c:6 + 4 * c, 4:24] = 1.0
    return TensorDataset(x, y)


def test_score_sources_averages_over_the_draws_and_gives_random_init_no_leep():
    from tl_course.selfsup import episode_indices
    from tl_course.transferability import RANDOM_INIT, features_of, score_sources

    pool = _tiny_target()
    models = {"upright": new_encoder(5, 0).eval(), RANDOM_INIT: new_encoder(5, 1).eval()}
    feats = {n: features_of(m, pool, CPU) for n, m in models.items()}
    draws = episode_indices(pool.tensors[1], 3, 2, seed=0)
    table, seconds = score_sources(models, pool, feats, draws, CPU)
    assert set(table) == {"LogME", "H-score", "CV probe", "LEEP"}
    assert RANDOM_INIT not in table["LEEP"] and "upright" in table["LEEP"]
    f = feats["upright"]
    want = np.mean([logme(f.x[i], f.y[i]) for i in draws])
    assert table["LogME"]["upright"] == pytest.approx(want)
    probs = source_probs(models["upright"], pool.tensors[0], CPU)
    want_leep = np.mean([leep(probs[i], pool.tensors[1][i]) for i in draws])
    assert table["LEEP"]["upright"] == pytest.approx(want_leep, rel=1e-5)
    assert all(s >= 0 for s in seconds.values())


def test_measure_ladder_pairs_sources_on_the_same_episodes():
    """Two copies of one model get identical probe results: every source is measured on
    the same episodes (paired)."""
    from tl_course.transferability import measure_ladder

    pool, test = _tiny_target(12, 0), _tiny_target(6, 1)
    enc = new_encoder(5, 0).eval()
    twin = new_encoder(5, 0).eval()
    res, feats = measure_ladder({"a": enc, "b": twin}, pool, test, CPU, ks=(2, 4),
                                probe_draws=3, finetune_k=2, budgets=(2,), finetune_draws=1)
    assert res.probe["a"] == res.probe["b"]
    assert set(res.probe["a"]) == {2, 4} and len(res.probe["a"][4]) == 3
    assert set(res.finetune["a"]) == {2} and len(res.finetune["a"][2]) == 1
    assert torch.equal(feats["a"].x, feats["b"].x)
    assert res.mean("probe", "a", 4) == pytest.approx(np.mean(res.probe["a"][4]))
