"""Scores that rank source models for a target task from one forward pass, no training.

Each takes what a source model gives on the target's *labelled* images (its features, or
its source-head probabilities) and the target labels; a higher score predicts better
transfer. What they all measure is how usable the frozen features (or source predictions)
are for the target labels, not what fine-tuning will reach.

- `logme`: the log marginal evidence of a Bayesian linear model on the features, per
  image, maximised over its two precisions (You et al., 2021);
- `leep`: log expected empirical prediction from the source head (Nguyen et al., 2020);
- `h_score`: between-class over total feature covariance (Bao et al., 2019); with
  `shrinkage=True` the covariance is Ledoit-Wolf shrunk (Ibrahim et al., 2023), which is
  what keeps it finite when features outnumber images;
- `cv_probe`: the plain baseline, cross-validated accuracy of a logistic-regression probe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _as_array(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _check(features: ArrayLike, labels: ArrayLike, what: str = "features"
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features as float64 (N, D), labels as 0..C-1, the original class values)."""
    f = _as_array(features, what)
    y = np.asarray(labels.cpu().numpy() if isinstance(labels, torch.Tensor) else labels)
    if f.ndim != 2:
        raise ValueError(f"{what} must be 2-d (images, dims), got shape {f.shape}; "
                         "flatten them first, e.g. x.flatten(1)")
    if y.ndim != 1 or len(y) != len(f):
        raise ValueError(f"labels must be 1-d with one label per row of {what}: got "
                         f"{len(f)} rows and labels of shape {y.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{what} contain NaN or infinite values")
    classes, y_idx = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"labels hold one class ({classes.tolist()}): a score compares "
                         "classes, so give labelled images of at least two")
    return f, y_idx, classes


def logme(features: ArrayLike, labels: ArrayLike, iters: int = 100, tol: float = 1e-6
          ) -> float:
    """LogME: the maximised log evidence per image of a linear model on `features`,
    averaged over one-vs-rest targets of the classes (You et al., 2021).

    For each class c, the target is y = 1 for images of c, else 0, and the model
    y = F w + noise, with w ~ N(0, I / alpha) and noise ~ N(0, 1 / beta). The evidence
    p(y | F, alpha, beta) is maximised by the MacKay fixed point on the SVD of F.
    """
    f, y_idx, classes = _check(features, labels)
    n, d = f.shape
    if np.allclose(f, f[0]):
        raise ValueError("the features are the same for every image: nothing to score")
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma2 = s ** 2  # eigenvalues of F^T F that are not zero (at most min(n, d))
    r = len(s)
    total = 0.0
    for c in range(len(classes)):
        y = (y_idx == c).astype(np.float64)
        uy = u.T @ y  # y in the basis of F's left singular vectors
        rest = float(y @ y - uy @ uy)  # the part of y no linear model of F can fit
        alpha, beta = 1.0, 1.0
        for _ in range(iters):
            shrink = beta * sigma2 / (alpha + beta * sigma2)
            gamma = float(shrink.sum())
            m2 = float(np.sum((beta * s * uy / (alpha + beta * sigma2)) ** 2))  # |m|^2
            res2 = float(np.sum(((1 - shrink) * uy) ** 2)) + rest  # |F m - y|^2
            new_alpha = gamma / max(m2, 1e-12)
            new_beta = (n - gamma) / max(res2, 1e-12)
            done = (abs(new_alpha - alpha) / alpha < tol and abs(new_beta - beta) / beta < tol)
            alpha, beta = new_alpha, new_beta
            if done:
                break
        m2 = float(np.sum((beta * s * uy / (alpha + beta * sigma2)) ** 2))
        res2 = float(np.sum((alpha / (alpha + beta * sigma2) * uy) ** 2)) + rest
        logdet = float(np.sum(np.log(alpha + beta * sigma2))) + (d - r) * math.log(alpha)
        evidence = (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
                    - beta / 2 * res2 - alpha / 2 * m2 - logdet / 2)
        total += evidence / n
    return total / len(classes)


def leep(source_probs: ArrayLike, labels: ArrayLike) -> float:
    """LEEP: mean log-likelihood of the target labels under the "expected empirical
    predictor", the source head's class probabilities mapped to target labels through
    their empirical joint distribution (Nguyen et al., 2020).

    `source_probs` (N, Z) is the source model's softmax on the target images (rows sum to
    1). A source head that says the same for every image scores the log-frequency of the
    labels: log(1 / C) on a balanced target of C classes.
    """
    p, y_idx, classes = _check(source_probs, labels, "source_probs")
    if np.any(p < 0) or not np.allclose(p.sum(1), 1.0, atol=1e-4):
        raise ValueError("source_probs must be probabilities (non-negative rows summing to "
                         "1): pass the source head's softmax, not its logits")
    n = len(p)
    onehot = np.eye(len(classes))[y_idx]  # (N, C)
    joint = onehot.T @ p / n  # P(y, z), (C, Z)
    marginal = joint.sum(0, keepdims=True)  # P(z)
    cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P(y|z)
    eep = p @ cond.T  # (N, C): sum_z P(y | z) p(z | x)
    return float(np.mean(np.log(eep[np.arange(n), y_idx])))


def _ledoit_wolf(x: np.ndarray) -> np.ndarray:
    from sklearn.covariance import LedoitWolf

    return LedoitWolf(assume_centered=False).fit(x).covariance_


def h_score(features: ArrayLike, labels: ArrayLike, shrinkage: bool = True) -> float:
    """H-score: tr(cov(f)^-1 cov(E[f | y])), how much of the features' spread lies
    between the classes (Bao et al., 2019).

    With `shrinkage` (default), cov(f) is the Ledoit-Wolf estimate (Ibrahim et al., 2023);
    without, the sample covariance with a pseudo-inverse (the original).
    """
    f, y_idx, classes = _check(features, labels)
    if np.allclose(f, f[0]):
        raise ValueError("the features are the same for every image: nothing to score")
    f = f - f.mean(0)
    means = np.stack([f[y_idx == c].mean(0) for c in range(len(classes))])
    g = means[y_idx]  # each image replaced by its class mean
    cov_g = g.T @ g / len(f)
    if shrinkage:
        cov_f = _ledoit_wolf(f)
        return float(np.trace(np.linalg.solve(cov_f, cov_g)))
    cov_f = f.T @ f / len(f)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-10, hermitian=True) @ cov_g))


def cv_probe(features: ArrayLike, labels: ArrayLike, folds: int = 5, c: float = 1.0,
             seed: int = 0) -> float:
    """Cross-validated accuracy of a logistic-regression probe on standardised features:
    the plain baseline every score should be compared with."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f, y_idx, _ = _check(features, labels)
    smallest = int(np.bincount(y_idx).min())
    if smallest < 2:
        raise ValueError("cross-validation needs at least 2 labelled images per class, "
                         f"the smallest class has {smallest}")
    folds = min(folds, smallest)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(pipe, f, y_idx, cv=split).mean())


def rank_agreement(scores: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """Kendall's tau and Spearman's rho between a score and a measured accuracy over the
    same sources (1: the same order, 0: unrelated, -1: reversed)."""
    from scipy.stats import kendalltau, spearmanr

    a, b = np.asarray(scores, dtype=float), np.asarray(measured, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 3:
        raise ValueError("need one score and one measured value per source, for at least "
                         f"3 sources; got {a.shape} and {b.shape}")
    return {"kendall": float(kendalltau(a, b)[0]), "spearman": float(spearmanr(a, b)[0])}


# The scores that read features (LEEP reads a source head instead).
SCORES = {"LogME": logme, "H-score": h_score, "CV probe": cv_probe}
