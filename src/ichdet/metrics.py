"""Classification metrics as pure functions on arrays (labels 0/1, scores: higher = positive)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from ichdet.errors import InputError


def _check(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise InputError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if not np.isin(y, (0, 1)).all():
        raise InputError(f"labels must be 0 or 1, got values {sorted(set(y.tolist()))[:5]}")
    if not np.isfinite(s).all():
        raise InputError("scores contain NaN or infinity")
    return y, s


def roc_auc(y_true: Any, scores: Any) -> float:
    """Area under the ROC curve (ties count one half); NaN when only one class is present."""
    y, s = _check(y_true, scores)
    if y.min(initial=0) == y.max(initial=0):
        return math.nan
    return float(roc_auc_score(y, s))


def threshold_for_sensitivity(y_true: Any, scores: Any, target: float = 0.98) -> float:
    """The highest threshold t with sensitivity(score >= t) >= `target` (the maximal-sensitivity
    operating point; choose it on validation data and apply it unchanged to test data)."""
    y, s = _check(y_true, scores)
    pos = np.sort(s[y == 1])[::-1]
    if pos.size == 0:
        raise InputError("cannot choose a sensitivity threshold without positive cases")
    k = max(1, math.ceil(target * pos.size - 1e-9))
    return float(pos[k - 1])


def binary_stats(y_true: Any, scores: Any, threshold: float) -> dict[str, float | int]:
    """Sensitivity, specificity, accuracy, PPV, NPV and the confusion counts at `score >= threshold`."""
    y, s = _check(y_true, scores)
    pred = s >= threshold
    tp, fn = int((pred & (y == 1)).sum()), int((~pred & (y == 1)).sum())
    tn, fp = int((~pred & (y == 0)).sum()), int((pred & (y == 0)).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    return {"threshold": float(threshold), "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
            "accuracy": ratio(tp + tn, y.size), "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n_pos": tp + fn, "n_neg": tn + fp}
