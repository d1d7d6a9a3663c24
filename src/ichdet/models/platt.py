"""Platt scaling (Platt 1999): P(positive) = sigmoid(a * d + c), fitted to 0/1 labels from scores d.

Platt's own targets, (N+ + 1) / (N+ + 2) for a positive and 1 / (N- + 2) for a negative, keep the
slope finite on a set the scores separate perfectly (a few dozen validation images often are);
the fit is otherwise unregularised. `ichdet.engine.calibration` fits a network's logits with it,
`SVMHead` its out-of-fold decision values.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from ichdet.errors import InputError


def fit_platt(y: np.ndarray, d: np.ndarray) -> tuple[float, float] | None:
    """(a, c) of P(y = 1) = sigmoid(a * d + c) from labels `y` (N,) in {0, 1} and scores `d` (N,);
    None without both classes."""
    y, d = np.asarray(y), np.asarray(d, dtype=np.float64)
    if y.shape != d.shape or y.ndim != 1:
        raise InputError(f"fit_platt needs labels and scores of one shape (N,), got {y.shape} and {d.shape}")
    positive = y == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    t = np.where(positive, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    # soft targets as weights: each sample once as a positive (weight t) and once as a negative (1 - t)
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(
        np.concatenate([d, d])[:, None], np.r_[np.ones(len(d)), np.zeros(len(d))], sample_weight=np.r_[t, 1 - t])
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


__all__ = ["fit_platt"]
