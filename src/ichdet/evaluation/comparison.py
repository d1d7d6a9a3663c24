"""Several models scored on the same cases -> the comparison the papers report: per model AUC with
95% CI, figures at an operating point, DeLong p-values (against a reference model and pairwise),
and the ROC curves with bootstrap bands for `ichdet.report.roc_figure`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ichdet.errors import InputError
from ichdet.metrics import auc_ci, binary_stats, delong_test, roc_band, summarize


def operating_stats(y: np.ndarray, s: np.ndarray, threshold: float | np.ndarray) -> dict[str, Any]:
    """`summarize` at one threshold, or at per-case thresholds (e.g. each fold's own, chosen on its
    training folds): decisions ``s >= threshold`` pooled over all cases."""
    t = np.asarray(threshold, dtype=np.float64)
    if t.ndim == 0:
        return summarize(y, s, float(t))
    if t.shape != s.shape:
        raise InputError(f"per-case thresholds have shape {t.shape}, scores {s.shape}")
    out = summarize(y, s, 0.5)
    decided = binary_stats(y, (s >= t).astype(np.float64), 0.5)
    out.update({k: v for k, v in decided.items() if k != "threshold"})
    out["threshold"] = sorted({float(v) for v in t})
    return out


def model_entry(y: np.ndarray, s: np.ndarray, threshold: float | np.ndarray, n_boot: int = 2000,
                seed: int = 0) -> dict[str, Any]:
    """One model's metrics: `operating_stats` plus the stratified-bootstrap AUC CI (``auc_ci_bootstrap``)."""
    m = operating_stats(y, s, threshold)
    boot = auc_ci(y, s, method="bootstrap", n_boot=n_boot, seed=seed)
    m["auc_ci_bootstrap"] = [boot["low"], boot["high"]]
    return m


def compare(y: Sequence[int], scores: Mapping[str, Sequence[float]], thresholds: Mapping[str, Any],
            reference: str | None = None, n_boot: int = 2000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """{model: metrics} for models scored on the same cases (same order). Each entry: `summarize`'s
    keys, ``auc_ci_bootstrap``, and with a `reference` ``delong_p`` / ``delong_diff`` against it;
    ``delong_pairwise`` holds every other model's p-value."""
    y = np.asarray(y, dtype=np.int64)
    arrays = {m: np.asarray(v, dtype=np.float64) for m, v in scores.items()}
    if reference is not None and reference not in arrays:
        raise InputError(f"reference model {reference!r} is not among {list(arrays)}")
    for name, s in arrays.items():
        if s.shape != y.shape:
            raise InputError(f"model {name!r} has {s.size} scores for {y.size} cases")
    out: dict[str, dict[str, Any]] = {}
    for name, s in arrays.items():
        m = model_entry(y, s, thresholds[name], n_boot, seed)
        m["delong_pairwise"] = {o: delong_test(y, s, arrays[o])["p"] for o in arrays if o != name}
        if reference is not None:
            if name == reference:
                m["delong_p"], m["delong_diff"] = None, None
            else:
                t = delong_test(y, s, arrays[reference])
                m["delong_p"], m["delong_diff"] = t["p"], t["diff"]
        out[name] = m
    return out


def roc_curves(y: Sequence[int], scores: Mapping[str, Sequence[float]], metrics: Mapping[str, Mapping[str, Any]],
               labels: Mapping[str, str] | None = None, band: bool = True, n_boot: int = 500,
               seed: int = 0) -> list[dict[str, Any]]:
    """Curves for `ichdet.report.roc_figure`: ROC, AUC + CI, bootstrap band, operating point."""
    from sklearn.metrics import roc_curve

    y = np.asarray(y, dtype=np.int64)
    curves = []
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        fpr, tpr, _ = roc_curve(y, s)
        m = metrics[name]
        curves.append({"name": (labels or {}).get(name, name), "fpr": fpr, "tpr": tpr, "auc": m["auc"],
                       "auc_ci": m["auc_ci"], "band": roc_band(y, s, n_boot=n_boot, seed=seed) if band else None,
                       "point": {"fpr": 1 - m["specificity"], "tpr": m["sensitivity"]}})
    return curves
