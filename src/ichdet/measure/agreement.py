"""Agreement between a measurement and its reference, as pure functions: Dice overlap of label masks,
Bland-Altman limits of agreement, and the median with its bootstrap CI and IQR.

The bootstrap is `ichdet.metrics`'s (one stratum here: every value resampled with replacement,
`np.random.default_rng(seed)`, percentile interval), so AUC and Dice intervals are drawn alike.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import norm, t as student_t

from ichdet.datasets.manifest import SUBTYPES
from ichdet.errors import InputError
from ichdet.measure.volumes import check_label_mask
from ichdet.metrics import _resamples

N_BOOT = 2000  # bootstrap resamples for a median's CI


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise InputError(f"confidence level must lie strictly between 0 and 1, got {level}")
    return float(norm.ppf(0.5 + level / 2))


def _values(x: Any, what: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64).ravel()
    if not np.isfinite(v).all():
        raise InputError(f"{what} contain NaN or infinity")
    return v


def label_index(label: int | str | None) -> int | None:
    """A label as its mask value: None (any bleed) stays None, a subtype name or 1..5 gives 1..5."""
    if label is None:
        return None
    if isinstance(label, str):
        if label == "any":
            return None
        if label not in SUBTYPES:
            raise InputError(f"unknown label {label!r}; use 'any' or one of {', '.join(SUBTYPES)}")
        return SUBTYPES.index(label) + 1
    if not 1 <= int(label) <= len(SUBTYPES):
        raise InputError(f"label must be 1..{len(SUBTYPES)}, got {label}")
    return int(label)


def dice(pred: Any, truth: Any, label: int | str | None = None) -> float:
    """Dice overlap 2|P∩T| / (|P| + |T|) of two label masks of equal shape (e.g. (Z, H, W)); `label` None or
    "any" compares any bleed (nonzero), a subtype name or 1..5 that label alone. Both empty: NaN (no bleed to
    overlap; such scans are left out of Dice summaries)."""
    p, t = np.asarray(pred), np.asarray(truth)
    if p.shape != t.shape:
        raise InputError(f"predicted mask shape {p.shape} differs from the true mask's {t.shape}")
    k = label_index(label)
    p, t = (p != 0, t != 0) if k is None else (p == k, t == k)
    total = int(p.sum()) + int(t.sum())
    return math.nan if total == 0 else 2.0 * int(np.logical_and(p, t).sum()) / total


def dice_per_label(pred: Any, truth: Any) -> dict[str, float]:
    """{"any": Dice of any bleed, subtype: Dice of that label} of two label masks (Z, H, W) of equal shape
    (values 0..5, else InputError), from one pass over the voxels (a 6 x 6 confusion count); NaN where both
    are empty, as `dice`."""
    p, t = np.asarray(pred), np.asarray(truth)
    if p.shape != t.shape:
        raise InputError(f"predicted mask shape {p.shape} differs from the true mask's {t.shape}")
    p, t = check_label_mask(p, "predicted mask"), check_label_mask(t, "true mask")  # uint8 0..5
    n = len(SUBTYPES) + 1
    conf = np.bincount((p * np.uint8(n) + t).ravel(), minlength=n * n).reshape(n, n)  # (pred, truth) counts
    pairs = {"any": (int(conf[1:, 1:].sum()), int(conf[1:].sum()) + int(conf[:, 1:].sum()))}
    pairs.update({name: (int(conf[k, k]), int(conf[k].sum()) + int(conf[:, k].sum()))
                  for k, name in enumerate(SUBTYPES, start=1)})
    return {name: math.nan if total == 0 else 2.0 * both / total for name, (both, total) in pairs.items()}


def bland_altman(measured: Any, reference: Any, level: float = 0.95) -> dict[str, Any]:
    """Bland & Altman (Lancet 1986) agreement of paired values (N,): differences d = measured - reference;
    {"n", "bias" (mean d), "sd" (sample SD of d), "loa": [bias - z·sd, bias + z·sd] (z = 1.96 at 95 %),
    "bias_ci" (t interval, bias ± t(n-1)·sd/√n), "loa_ci": [[low of lower, high of lower], [.. upper]]
    (Bland & Altman's SE of a limit, √(3 sd²/n)), "level"}. NaN where n is too small (n = 0: all; n = 1: the
    spread and intervals)."""
    m, r = _values(measured, "measured values"), _values(reference, "reference values")
    if m.shape != r.shape:
        raise InputError(f"measured and reference values differ in length: {m.size} vs {r.size}")
    z = _z(level)
    d = m - r
    n = int(d.size)
    bias = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    loa = [bias - z * sd, bias + z * sd]
    if n > 1:
        tq = float(student_t.ppf(0.5 + level / 2, n - 1))
        half_bias, half_loa = tq * sd / math.sqrt(n), tq * math.sqrt(3 * sd * sd / n)
    else:
        half_bias = half_loa = math.nan
    return {"n": n, "bias": bias, "sd": sd, "loa": loa, "bias_ci": [bias - half_bias, bias + half_bias],
            "loa_ci": [[v - half_loa, v + half_loa] for v in loa], "level": float(level)}


def median_ci(values: Any, level: float = 0.95, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """{"n", "median", "median_ci": [low, high] (bootstrap percentile interval), "q1", "q3", "iqr" (q3 - q1),
    "level"} of finite values (N,) (quantiles by numpy's linear interpolation). n = 0: NaNs; n = 1: the CI
    is NaN (one value gives no spread to resample)."""
    v = _values(values, "values")
    _z(level)
    if n_boot < 2:
        raise InputError(f"n_boot must be at least 2, got {n_boot}")
    n = int(v.size)
    if n == 0:
        return {"n": 0, "median": math.nan, "median_ci": [math.nan, math.nan], "q1": math.nan, "q3": math.nan,
                "iqr": math.nan, "level": float(level)}
    q1, med, q3 = (float(x) for x in np.quantile(v, [0.25, 0.5, 0.75]))
    ci = [math.nan, math.nan]
    if n > 1:
        boot = np.concatenate([np.median(v[idx], axis=1) for idx in _resamples(np.ones(n, dtype=int), n_boot, seed)])
        ci = [float(x) for x in np.quantile(boot, [0.5 - level / 2, 0.5 + level / 2])]
    return {"n": n, "median": med, "median_ci": ci, "q1": q1, "q3": q3, "iqr": q3 - q1, "level": float(level)}


def error_summary(measured: Any, reference: Any, level: float = 0.95) -> dict[str, Any]:
    """Errors of paired values (N,) in their unit: {"n", "mean" (mean signed error, the bias), "mean_abs",
    "median_abs", "bland_altman": `bland_altman`'s dict}; NaNs when n = 0."""
    ba = bland_altman(measured, reference, level)
    d = np.abs(_values(measured, "measured values") - _values(reference, "reference values"))
    return {"n": ba["n"], "mean": ba["bias"], "mean_abs": float(d.mean()) if d.size else math.nan,
            "median_abs": float(np.median(d)) if d.size else math.nan, "bland_altman": ba}
