"""The proxy A-distance (Ben-David et al., 2007): how well can a classifier tell the domains apart?

Train a linear domain classifier on half of the source and target features, measure its
error `err` on the other half, and report 2 (1 - 2 err): 0 when the domains are
indistinguishable (err = 0.5), 2 when they are perfectly separable (err = 0). It turns
"the features are aligned" into a number that can sit next to target accuracy.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn


def proxy_a_distance(f_s: torch.Tensor | np.ndarray, f_t: torch.Tensor | np.ndarray,
                     seed: int = 0) -> float:
    """2 (1 - 2 err) of a logistic-regression domain classifier on held-out halves.

    f_s (n_s, d) and f_t (n_t, d) are features of the two domains. Both are split in half
    (stratified by domain, seeded); the classifier sees standardised features of one half
    and is scored on the other. Values a little below 0 are noise around "inseparable".
    """
    a, b = np.asarray(f_s, dtype=np.float64), np.asarray(f_t, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"proxy_a_distance needs two 2-D feature arrays (n, d) of the same d, "
                         f"got shapes {a.shape} and {b.shape}: flatten the features first")
    if min(len(a), len(b)) < 4:
        raise ValueError(f"need at least 4 examples per domain, got {len(a)} and {len(b)}")
    x = np.concatenate([a, b])
    y = np.concatenate([np.ones(len(a)), np.zeros(len(b))])
    x_fit, x_test, y_fit, y_test = train_test_split(x, y, test_size=0.5, stratify=y,
                                                    random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    err = 1.0 - clf.fit(x_fit, y_fit).score(x_test, y_test)
    return 2.0 * (1.0 - 2.0 * err)


def domain_features(model: nn.Module, images: torch.Tensor, device: torch.device,
                    batch_size: int = 512) -> torch.Tensor:
    """model.features of `images` in eval mode, on the CPU as float32."""
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                out.append(model.features(images[i:i + batch_size].to(device)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)
