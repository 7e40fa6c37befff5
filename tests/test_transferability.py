"""tl_course.transferability: LogME, LEEP, H-score, CV probe and rank agreement against
independent references and known values; the source ladder's transforms and its cache."""

from __future__ import annotations

import copy
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


def log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """The log evidence L(alpha, beta) of You et al. (2021), with the full D x D matrices:
    A = alpha I + beta F^T F, m = beta A^-1 F^T y."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    _, logdet = np.linalg.slogdet(a)
    return (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
            - beta / 2 * np.sum((f @ m - y) ** 2) - alpha / 2 * m @ m - logdet / 2)


def reference_log_evidence(f: np.ndarray, y: np.ndarray) -> float:
    """max over (alpha, beta) of the log evidence L of You et al. (2021), with the full
    D x D matrices, found by direct numerical optimisation (no fixed point, no SVD)."""

    def neg_evidence(params: np.ndarray) -> float:
        alpha, beta = np.exp(params)
        return -log_evidence(f, y, alpha, beta)

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


def reference_mackay_logme(f: np.ndarray, labels: np.ndarray, iters: int, tol: float
                           ) -> float:
    """LogME as You et al. (2021), Algorithm 1, with full matrices: from alpha = beta = 1,
    at most `iters` MacKay updations gamma = D - alpha tr(A^-1), alpha = gamma / m^T m,
    beta = (n - gamma) / |F m - y|^2, stopping once both change by less than `tol`
    (relative); the evidence per image at the last (alpha, beta), averaged over classes."""
    n, d = f.shape
    out = []
    for c in np.unique(labels):
        y = (labels == c).astype(float)
        alpha, beta = 1.0, 1.0
        for _ in range(iters):
            a = alpha * np.eye(d) + beta * f.T @ f
            m = beta * np.linalg.solve(a, f.T @ y)
            gamma = d - alpha * np.trace(np.linalg.inv(a))
            new_alpha, new_beta = gamma / (m @ m), (n - gamma) / np.sum((f @ m - y) ** 2)
            converged = (abs(new_alpha / alpha - 1) < tol and abs(new_beta / beta - 1) < tol)
            alpha, beta = new_alpha, new_beta
            if converged:
                break
        out.append(log_evidence(f, y, alpha, beta) / n)
    return float(np.mean(out))


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


def _logme_data(n: int = 60, d: int = 8, seed: int = 68):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    return rng.normal(size=(n, d)) + 0.8 * np.eye(3)[labels] @ rng.normal(size=(3, d)), labels


@pytest.mark.parametrize("iters, tol", [(1, 1e-6), (3, 1e-6), (100, 3e-2), (None, None)])
def test_logme_follows_the_mackay_fixed_point_of_the_paper(iters, tol):
    """Starting from alpha = beta = 1, `iters` bounds the updates and `tol` stops them once
    both precisions have settled (relative change); defaults 100 and 1e-6. The SVD
    form agrees with the full-matrix algorithm at every stopping point."""
    f, labels = _logme_data()
    kw = {} if iters is None else {"iters": iters, "tol": tol}
    want = reference_mackay_logme(f, labels, iters or 100, tol or 1e-6)
    assert logme(f, labels, **kw) == pytest.approx(want, rel=1e-10)


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


def test_logme_names_features_in_its_errors():
    """Shape errors of the feature scores name their input: features."""
    with pytest.raises(ValueError, match="features must be 2-d"):
        logme(np.ones((6, 2, 2)), np.arange(6) % 2)


def test_leep_refuses_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20, 4))
    with pytest.raises(ValueError, match="softmax"):
        leep(logits, np.arange(20) % 2)


def test_leep_skips_source_classes_that_are_never_predicted():
    """A source class with P(z) = 0 (a column of zeros) carries no P(y | z): it is left
    out of the sum instead of turning the score into NaN."""
    rng = np.random.default_rng(1)
    labels = np.arange(24) % 3
    p = np.zeros((24, 4))
    p[:, :3] = rng.dirichlet(np.ones(3), size=24)  # source class 3 never predicted
    p[::4] = np.eye(4)[labels[::4] % 3]  # some certain rows, a zero in most columns
    got = leep(p, labels)
    assert np.isfinite(got)
    assert got == pytest.approx(reference_leep(p, labels), rel=1e-10)


def test_leep_refuses_negative_entries_even_when_rows_sum_to_one():
    """Negative "probabilities" are refused even when every row sums to 1."""
    p = np.tile([1.2, -0.2], (10, 1))
    with pytest.raises(ValueError, match="non-negative"):
        leep(p, np.arange(10) % 2)


def test_leep_accepts_rows_rounded_to_four_decimals_but_not_unnormalised_rows():
    """Rows summing to 1 up to rounding (1.00005) are probabilities; rows summing to
    1.001 are not."""
    labels = np.arange(12) % 2
    rounded = np.tile([0.33335, 0.33335, 0.33335], (12, 1))
    assert leep(rounded, labels) == pytest.approx(reference_leep(rounded, labels), rel=1e-10)
    with pytest.raises(ValueError, match="summing to"):
        leep(np.tile([0.3337, 0.3337, 0.3337], (12, 1)), labels)


def test_leep_names_source_probs_in_its_errors():
    """LEEP's input is the head's softmax, and its shape errors say so."""
    with pytest.raises(ValueError, match="source_probs must be 2-d"):
        leep(np.ones((6, 2, 2)) / 4, np.arange(6) % 2)
    with pytest.raises(ValueError, match="one label per row of source_probs"):
        leep(_probs(6), np.arange(5) % 2)


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


def test_h_score_ignores_a_feature_duplicated_in_float32():
    """A copy of a feature that differs from it only by float32 rounding adds no
    direction: the pseudo-inverse treats the rounding noise as null, so the H-score is
    that of the features without the copy."""
    rng = np.random.default_rng(3)
    y = np.arange(60) % 3
    f = rng.normal(size=(60, 4)) + np.eye(3, 4)[y] + 10
    dup = np.hstack([f, f[:, :1].astype(np.float32).astype(np.float64)])
    assert h_score(dup, y, shrinkage=False) == pytest.approx(reference_h_score(f, y),
                                                             rel=1e-6)


def test_h_score_with_shrinkage_stays_finite_with_more_dims_than_images():
    f, y = blobs(5, 2, 40, 1.0, seed=6)
    assert np.isfinite(h_score(f, y, shrinkage=True))


# --------------------------------------------------------------------------- CV probe


def reference_cv_probe(f, y, folds, c, seed):
    """Stratified, shuffled k-fold (seeded); in each fold standardise with the training
    part's mean and std, fit logistic regression with C = c, score the held-out part."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    accs = []
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(f, y):
        mu, sd = f[tr].mean(0), f[tr].std(0)
        clf = LogisticRegression(C=c, max_iter=10_000).fit((f[tr] - mu) / sd, y[tr])
        accs.append(np.mean(clf.predict((f[te] - mu) / sd) == y[te]))
    return float(np.mean(accs))


def _mixed_scale_blobs(n_per: int = 12, seed: int = 13):
    """Overlapping classes whose informative features are tiny next to noisy ones, so the
    accuracy depends on standardising, on C and on the folds."""
    f, y = blobs(n_per, 3, 3, 2.0, seed=seed)
    noise = np.random.default_rng(seed + 1).normal(size=(len(y), 3)) * 100
    return np.hstack([f * 0.01, noise]), y


def test_cv_probe_matches_the_reference_at_its_defaults_and_other_settings():
    """Defaults: 5 folds, C = 1, seed 0; each seed gives its own (reproducible) split."""
    f, y = _mixed_scale_blobs()
    assert cv_probe(f, y) == pytest.approx(reference_cv_probe(f, y, 5, 1.0, 0), abs=1e-12)
    assert cv_probe(f, y + 5, folds=3, c=0.2, seed=2) == pytest.approx(
        reference_cv_probe(f, y, 3, 0.2, 2), abs=1e-12)
    got = [cv_probe(f, y, seed=s) for s in (1, 2, 3)]
    assert got == pytest.approx([reference_cv_probe(f, y, 5, 1.0, s) for s in (1, 2, 3)],
                                abs=1e-12)
    assert len(set(got)) > 1  # the seed matters here


def test_cv_probe_uses_as_many_folds_as_the_smallest_class_allows():
    """A class with 2 (or 3) images: 2 (or 3) folds instead of refusing."""
    f, y = _mixed_scale_blobs()
    for keep in (2, 3):
        rows = np.r_[np.flatnonzero(y != 0), np.flatnonzero(y == 0)[:keep]]
        fk, yk = f[rows], y[rows]
        assert cv_probe(fk, yk) == pytest.approx(reference_cv_probe(fk, yk, keep, 1.0, 0),
                                                 abs=1e-12)


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


@pytest.mark.parametrize("score", [logme, h_score], ids=lambda s: s.__name__)
def test_features_equal_up_to_rounding_noise_are_refused(score):
    """Rows that differ from the first by at most 1e-8 are the same features (even where
    two other rows differ from each other by twice that)."""
    f = np.zeros((10, 4))
    f[1::2], f[2::2] = 0.9e-8, -0.9e-8
    with pytest.raises(ValueError, match="same for every image"):
        score(f, np.arange(10) % 2)


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


def test_rank_agreement_works_from_three_sources():
    """Three sources are enough (the documented minimum), and agree with scipy."""
    a, b = [0.3, 0.1, 0.2], [0.9, 0.8, 0.95]
    out = rank_agreement(a, b)
    assert out["kendall"] == pytest.approx(kendalltau(a, b)[0], rel=1e-12)
    assert out["spearman"] == pytest.approx(spearmanr(a, b)[0], rel=1e-12)


def test_rank_agreement_ranks_numbers_given_as_text_by_value():
    """Values read as text (from a CSV, say) are converted to numbers: "10" ranks above
    "9", not below it as a string would."""
    scores, measured = ["9", "10", "11"], [0.1, 0.2, 0.3]
    assert rank_agreement(scores, measured) == {"kendall": pytest.approx(1.0),
                                                "spearman": pytest.approx(1.0)}
    assert rank_agreement(measured, scores) == {"kendall": pytest.approx(1.0),
                                                "spearman": pytest.approx(1.0)}


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


@pytest.mark.filterwarnings("error:Default grid_sample")
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


@pytest.mark.filterwarnings("error:Default grid_sample")
def test_rotate_keeps_float64_images_in_float64():
    """A float64 image turns by 30 degrees in float64, like its float32 copy does in
    float32 (the same picture to float32 precision)."""
    x = _blob_image()
    out = rotate(x.double(), 30)
    assert out.dtype == torch.float64
    assert torch.allclose(out.float(), rotate(x, 30), atol=1e-6)


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


def test_transform_seeds_are_fixed_by_default():
    """Labels are shuffled with seed 0 unless told otherwise (another seed, another
    shuffle); "permuted" is the course's scrambled-pixels domain with seed 0 whatever the
    seed."""
    from tl_course.transfer import scramble_pixels

    ds = _digits(40)
    default = transform("shuffled labels", ds).tensors[1]
    assert torch.equal(default, transform("shuffled labels", ds, seed=0).tensors[1])
    assert not torch.equal(default, transform("shuffled labels", ds, seed=1).tensors[1])
    want = scramble_pixels(ds, seed=0).tensors[0]
    assert torch.equal(transform("permuted", ds).tensors[0], want)
    assert torch.equal(transform("permuted", ds, seed=3).tensors[0], want)


def test_transform_unknown_rung_is_refused():
    with pytest.raises(ValueError, match="unknown rung"):
        transform("sideways", _digits(4))




# --------------------------------------------------------------------------- ladder: sources


def test_new_encoder_is_a_seeded_digit_encoder_with_five_classes_by_default():
    """new_encoder() is DigitEncoder(5) initialised from seed 0; arguments change both."""
    from tl_course.selfsup.pretext import DigitEncoder

    torch.manual_seed(0)
    want = DigitEncoder(num_classes=5).state_dict()
    got = new_encoder().state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    torch.manual_seed(4)
    want = DigitEncoder(num_classes=3).state_dict()
    got = new_encoder(3, seed=4).state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def reference_train_on(data, steps, seed=0, batch_size=128, lr=3e-3):
    """train_on's recipe as a bare loop: a DigitEncoder seeded with `seed`, batches of
    128 shuffled with `seed`, round(steps / batches) epochs (at least 1) of AdamW (weight
    decay 1e-4) and cross-entropy, a one-cycle schedule peaking at lr stepped per epoch."""
    from tl_course.data import make_loader
    from tl_course.selfsup.pretext import DigitEncoder

    torch.manual_seed(seed)
    model = DigitEncoder(num_classes=int(data.tensors[1].max()) + 1)
    loader = make_loader(data, batch_size, CPU, shuffle=True, seed=seed)
    epochs = max(1, round(steps / len(loader)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs)
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        sched.step()
    return model.eval()


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)


def test_train_on_matches_a_plain_training_loop(capsys):
    """At its defaults (3 batches of at most 128: 6 steps are 2 epochs) and with another
    seed, batch size and lr (2 steps round to 1 epoch); silently (no progress bar)."""
    g = torch.Generator().manual_seed(5)
    data = TensorDataset(torch.rand(300, 1, 28, 28, generator=g), torch.arange(300) % 4)
    assert _same_weights(ladder.train_on(data, CPU, steps=6), reference_train_on(data, 6))
    got = ladder.train_on(data, CPU, steps=2, seed=2, batch_size=100, lr=1e-2)
    assert _same_weights(got, reference_train_on(data, 2, seed=2, batch_size=100, lr=1e-2))
    assert not got.training
    assert capsys.readouterr().err == ""


def test_train_source_trains_on_its_rung_with_its_seed():
    """The source of a rung is train_on's recipe applied to that rung's data, with the
    same seed for the rung's change and the training (0 by default)."""
    ds = _digits(40)
    for kw, seed in [({}, 0), ({"seed": 1}, 1)]:
        got = train_source("shuffled labels", ds, CPU, steps=2, **kw)
        want = reference_train_on(transform("shuffled labels", ds, seed=seed), 2, seed=seed)
        assert _same_weights(got, want)


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


def test_ladder_sources_passes_its_seed_to_the_rung_and_to_training(tmp_path):
    """With seed 1 the "shuffled labels" source is the encoder trained (seed 1) on the
    labels shuffled with seed 1, and its file records s1."""
    ds = _digits(40)
    got = ladder_sources(ds, CPU, data_tag="t", rungs=("shuffled labels",), steps=2, seed=1,
                         root=tmp_path)["shuffled labels"]
    assert [p.name for p in (tmp_path / "models").iterdir()] == [
        "ladder_shuffledlabels_t_st2_s1.pt"]
    want = ladder.train_on(transform("shuffled labels", ds, seed=1), CPU, steps=2, seed=1)
    a, b = got.state_dict(), want.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


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


def test_cached_source_defaults_to_the_course_data_cache(tmp_path, monkeypatch):
    """Without `root`, sources are saved under the data cache's models/ folder."""
    monkeypatch.setattr(ladder, "data_dir", lambda: tmp_path)
    data = _digits(20)
    cached_source("default root", data, CPU, data_tag="t", steps=1)
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["defaultroot_t_st1_s0.pt"]


@pytest.mark.filterwarnings("error:Implicit dimension choice")
def test_source_probs_are_softmax_rows_in_eval_mode():
    """The head's softmax over the classes of each image (no implicit-dim warning), read
    in eval mode, across batches."""
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


class _FakeClock:
    """A stand-in for the `time` module in evaluate: perf_counter steps by `tick` per call,
    starting from a large value (so a sum of two readings is far from a difference)."""

    def __init__(self, tick: float = 0.25):
        self.now, self.tick = 1000.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


def test_score_sources_seconds_are_each_scores_total_over_all_sources(monkeypatch):
    """With a clock that moves one tick per reading, every timed call lasts one tick: each
    feature score's total is one tick per source, LEEP's one tick per source with a head."""
    from tl_course.selfsup import episode_indices
    from tl_course.transferability import RANDOM_INIT, evaluate, features_of, score_sources

    pool = _tiny_target(4)
    models = {"a": new_encoder(5, 0).eval(), "b": new_encoder(5, 2).eval(),
              RANDOM_INIT: new_encoder(5, 1).eval()}
    feats = {n: features_of(m, pool, CPU) for n, m in models.items()}
    draws = episode_indices(pool.tensors[1], 3, 1, seed=0)
    clock = _FakeClock(0.25)
    monkeypatch.setattr(evaluate, "time", clock)
    _, seconds = score_sources(models, pool, feats, draws, CPU)
    assert seconds == {"LogME": 0.75, "H-score": 0.75, "CV probe": 0.75, "LEEP": 0.5}


def _reference_ladder(models, pool, test, *, ks, probe_draws, finetune_k, budgets,
                      finetune_draws, lr, seed):
    """measure_ladder's contract from the few-shot building blocks: the same episodes
    (drawn with `seed`) for every source; a probe per episode; a fine-tuned copy of each
    encoder with a fresh head for the target's classes, per budget and episode."""
    from tl_course.selfsup import episode_indices
    from tl_course.selfsup.fewshot import classifier_from, probe_episodes, train_episodes
    from tl_course.transferability import features_of

    labels = pool.tensors[1]
    draws = {k: episode_indices(labels, k, probe_draws, seed=seed) for k in ks}
    ft_draws = episode_indices(labels, finetune_k, finetune_draws, seed=seed)
    probe, finetune = {}, {}
    for name, m in models.items():
        pf, tf = features_of(m, pool, CPU), features_of(m, test, CPU)
        probe[name] = {k: probe_episodes(pf, tf, draws[k]) for k in ks}
    for name, m in models.items():
        finetune[name] = {s: train_episodes(lambda m=m: classifier_from(m, 5), pool, test,
                                            ft_draws, CPU, steps=s, lr=lr, views=None)
                          for s in budgets}
    return probe, finetune


def _faint_target(n_per_class: int, seed: int) -> TensorDataset:
    """Like _tiny_target but with faint bars in strong noise, so that probe and fine-tune
    accuracies vary between episodes instead of all being 1."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(5).repeat_interleave(n_per_class)
    x = torch.rand(len(y), 1, 28, 28, generator=gen)
    for c in range(5):
        x[y == c, 0, 4 + 4 * c:6 + 4 * c, 4:24] += 0.3
    return TensorDataset(x, y)


def test_measure_ladder_pairs_the_fine_tuning_of_identical_sources():
    """Two copies of one source fine-tune to the same accuracies: each episode's fresh head
    and batches come from the episode's seed, so sources differ only by their weights."""
    from tl_course.transferability import measure_ladder

    pool, test = _faint_target(6, 0), _faint_target(10, 1)
    source = new_encoder(5, 0).eval()
    models = {"a": source, "b": copy.deepcopy(source)}
    res, _ = measure_ladder(models, pool, test, CPU, ks=(1,), probe_draws=1, finetune_k=2,
                            budgets=(2,), finetune_draws=3)
    assert res.finetune["a"] == res.finetune["b"]
    assert res.probe["a"] == res.probe["b"]


@pytest.mark.parametrize("seed", [None, 3], ids=["default seed", "seed 3"])
def test_measure_ladder_reproduces_probes_and_fine_tuning_from_the_building_blocks(
        seed, monkeypatch):
    """Probe and fine-tune accuracies equal a plain re-run of the documented recipe (the
    default lr 3e-3 and seed 0, a head for the pool's 5 classes), and the timings are
    the probing and fine-tuning phases (one clock tick each with a fake clock)."""
    from tl_course.transferability import evaluate, measure_ladder

    pool, test = _faint_target(6, 0), _faint_target(10, 1)
    models = {"a": new_encoder(5, 0).eval(), "b": new_encoder(5, 1).eval()}
    kw = dict(ks=(1, 3), probe_draws=2, finetune_k=2, budgets=(1, 4), finetune_draws=2)
    seed_kw = {} if seed is None else {"seed": seed}
    monkeypatch.setattr(evaluate, "time", _FakeClock(0.5))
    torch.manual_seed(123)  # fresh heads come from each episode's seed, not from here
    res, _ = measure_ladder(models, pool, test, CPU, **kw, **seed_kw)
    torch.manual_seed(7)
    probe, finetune = _reference_ladder(models, pool, test, **kw, lr=3e-3,
                                        seed=0 if seed is None else seed)
    assert res.probe == probe
    assert res.finetune == finetune
    assert res.seconds == {"probing": 0.5, "fine-tuning": 0.5}
