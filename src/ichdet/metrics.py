"""Classification metrics as pure functions on arrays (labels 0/1, scores: higher = positive).

AUC with DeLong variance (Sun & Xu 2014 fast algorithm), CIs (DeLong, stratified bootstrap), the paired
DeLong test, a bootstrap ROC band, operating points with Wilson CIs, Brier score and reliability curves.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata
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


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise InputError(f"confidence level must lie strictly between 0 and 1, got {level}")
    return float(norm.ppf(0.5 + level / 2))


def _both_classes(y: np.ndarray, what: str) -> None:
    m = int(y.sum())
    if m == 0 or m == y.size:
        raise InputError(f"{what} needs both classes, got {m} positives and {y.size - m} negatives")


def roc_auc(y_true: Any, scores: Any) -> float:
    """Area under the ROC curve (ties count one half); NaN when only one class is present."""
    y, s = _check(y_true, scores)
    if y.min(initial=0) == y.max(initial=0):
        return math.nan
    return float(roc_auc_score(y, s))


# ---------------------------------------------------------------- DeLong
def delong_covariance(y_true: Any, scores_matrix: Any) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their DeLong covariance (k, k) for k score rows (k, n) on the same cases, by the
    O(n log n) midrank algorithm of Sun & Xu (2014). Variances are NaN with fewer than 2 cases per class."""
    s = np.asarray(scores_matrix, dtype=np.float64)
    s = s[None, :] if s.ndim == 1 else s
    if s.ndim != 2 or s.shape[0] == 0:
        raise InputError(f"scores_matrix must have shape (models, cases), got shape {s.shape}")
    y, _ = _check(y_true, s[0])
    if not np.isfinite(s).all():
        raise InputError("scores contain NaN or infinity")
    _both_classes(y, "DeLong AUC")
    pos, neg = s[:, y == 1], s[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx, ty = rankdata(pos, axis=1), rankdata(neg, axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v10 = (tz[:, :m] - tx) / n        # per positive: fraction of negatives below it (ties 1/2)
    v01 = 1.0 - (tz[:, m:] - ty) / m  # per negative: fraction of positives above it (ties 1/2)
    k = s.shape[0]
    if m < 2 or n < 2:
        return aucs, np.full((k, k), math.nan)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_auc(y_true: Any, scores: Any) -> tuple[float, float]:
    """AUC (ties count one half) and its DeLong variance."""
    aucs, cov = delong_covariance(y_true, np.asarray(scores, dtype=np.float64).ravel())
    return float(aucs[0]), float(cov[0, 0])


def delong_test(y_true: Any, scores_a: Any, scores_b: Any) -> dict[str, float]:
    """Paired two-sided DeLong test of AUC(a) == AUC(b) on the same cases. A zero variance of the
    difference gives z = 0, p = 1 when the AUCs are equal (identical scores) and z = ±inf, p = 0 otherwise."""
    a = np.asarray(scores_a, dtype=np.float64).ravel()
    b = np.asarray(scores_b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise InputError(f"the two models' scores differ in length: {a.size} vs {b.size}")
    aucs, cov = delong_covariance(y_true, np.vstack([a, b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:
        z = 0.0 if abs(diff) <= 1e-15 else math.copysign(math.inf, diff)
        p = 1.0 if z == 0.0 else 0.0
    else:
        z = diff / math.sqrt(var)
        p = float(2 * norm.sf(abs(z)))
    se = math.sqrt(max(var, 0.0)) if math.isfinite(var) else math.nan
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": diff, "se": se, "z": z, "p": p}


# ---------------------------------------------------------------- bootstrap
def _resamples(y: np.ndarray, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of stratified bootstrap case indices (rows: resamples, positives first, then negatives), drawn
    from `np.random.default_rng(seed)`; blocks stay near 2e6 indices to bound memory."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    step = max(1, 2_000_000 // y.size)
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        yield np.hstack([pos[rng.integers(0, pos.size, (b, pos.size))], neg[rng.integers(0, neg.size, (b, neg.size))]])


def _bootstrap_aucs(y: np.ndarray, s: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """AUC of each stratified resample, in O(n) per resample from counts over the distinct scores."""
    m, n = int(y.sum()), int(y.size - y.sum())
    _, u = np.unique(s, return_inverse=True)
    n_u = int(u.max()) + 1
    out = []
    for idx in _resamples(y, n_boot, seed):
        b = idx.shape[0]
        cnt = np.bincount((u[idx[:, m:]] + n_u * np.arange(b)[:, None]).ravel(), minlength=b * n_u).reshape(b, n_u)
        credit = np.cumsum(cnt, axis=1) - 0.5 * cnt  # negatives below each distinct score, ties count 1/2
        out.append(np.take_along_axis(credit, u[idx[:, :m]], axis=1).sum(axis=1) / (m * n))
    return np.concatenate(out)


def auc_ci(y_true: Any, scores: Any, level: float = 0.95, method: str = "delong", n_boot: int = 2000,
           seed: int = 0) -> dict[str, Any]:
    """AUC with a confidence interval. "delong": AUC ± z·SE (plain normal approximation on the AUC scale, no
    logit transform), clipped to [0, 1]. "bootstrap": stratified bootstrap (positives and negatives resampled
    separately, `np.random.default_rng(seed)`), percentile interval, se = bootstrap standard deviation."""
    y, s = _check(y_true, scores)
    z = _z(level)
    _both_classes(y, "AUC confidence interval")
    if method == "delong":
        auc, var = delong_auc(y, s)
        se = math.sqrt(var) if math.isfinite(var) else math.nan
        low, high = (max(0.0, auc - z * se), min(1.0, auc + z * se)) if math.isfinite(se) else (math.nan, math.nan)
    elif method == "bootstrap":
        if n_boot < 2:
            raise InputError(f"n_boot must be at least 2, got {n_boot}")
        auc = float(roc_auc_score(y, s))
        boot = _bootstrap_aucs(y, s, int(n_boot), seed)
        low, high = (float(v) for v in np.quantile(boot, [0.5 - level / 2, 0.5 + level / 2]))
        se = float(boot.std(ddof=1))
    else:
        raise InputError(f"unknown AUC CI method {method!r}; use 'delong' or 'bootstrap'")
    return {"auc": float(auc), "low": float(low), "high": float(high), "se": float(se), "method": method,
            "level": float(level)}


def bootstrap_auc_ci(y_true: Any, scores: Any, level: float = 0.95, n_boot: int = 2000,
                     seed: int = 0) -> dict[str, Any]:
    """`auc_ci` with method="bootstrap"."""
    return auc_ci(y_true, scores, level=level, method="bootstrap", n_boot=n_boot, seed=seed)


# ---------------------------------------------------------------- ROC curve and band
def _roc_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empirical ROC vertices (fpr, tpr) from (0, 0) to (1, 1), one per distinct threshold, non-decreasing."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), y.size - 1]  # last index of each tied score block
    tp = np.cumsum(y_sorted)[last]
    fp = (last + 1) - tp
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The ROC polyline at `grid`, taking the highest TPR where the curve is vertical."""
    hi = np.searchsorted(fpr, grid, side="right")  # first vertex with fpr > grid
    lo = hi - 1                                    # last vertex with fpr <= grid (its TPR is the max there)
    nxt = np.minimum(hi, fpr.size - 1)
    span = fpr[nxt] - fpr[lo]
    w = np.divide(grid - fpr[lo], span, out=np.zeros_like(grid), where=span > 0)
    return tpr[lo] + w * (tpr[nxt] - tpr[lo])


def roc_band(y_true: Any, scores: Any, fpr_grid: Any = None, level: float = 0.95, n_boot: int = 1000,
             seed: int = 0) -> dict[str, np.ndarray]:
    """Empirical ROC TPR at `fpr_grid` (default 0, 0.01, ..., 1) with a pointwise percentile band over
    stratified bootstrap resamples."""
    y, s = _check(y_true, scores)
    _z(level)
    _both_classes(y, "ROC band")
    grid = np.linspace(0.0, 1.0, 101) if fpr_grid is None else np.asarray(fpr_grid, dtype=np.float64).ravel()
    if grid.size == 0 or not ((grid >= 0) & (grid <= 1)).all():
        raise InputError("fpr_grid must be a non-empty list of values in [0, 1]")
    if n_boot < 2:
        raise InputError(f"n_boot must be at least 2, got {n_boot}")
    curves = np.array([_tpr_at(*_roc_points(y[i], s[i]), grid) for idx in _resamples(y, int(n_boot), seed)
                       for i in idx])
    low, high = np.quantile(curves, [0.5 - level / 2, 0.5 + level / 2], axis=0)
    return {"fpr": grid, "tpr": _tpr_at(*_roc_points(y, s), grid), "low": low, "high": high}


# ---------------------------------------------------------------- operating points
def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n; (nan, nan) when n == 0."""
    z = _z(level)
    if not 0 <= k <= n:
        raise InputError(f"need 0 <= k <= n for a proportion, got k={k}, n={n}")
    if n == 0:
        return math.nan, math.nan
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def threshold_for_sensitivity(y_true: Any, scores: Any, target: float = 0.98) -> float:
    """The highest threshold t with sensitivity(score >= t) >= `target` (the maximal-sensitivity
    operating point; choose it on validation data and apply it unchanged to test data)."""
    y, s = _check(y_true, scores)
    pos = np.sort(s[y == 1])[::-1]
    if pos.size == 0:
        raise InputError("cannot choose a sensitivity threshold without positive cases")
    k = max(1, math.ceil(target * pos.size - 1e-9))
    return float(pos[k - 1])


def youden_threshold(y_true: Any, scores: Any) -> float:
    """The threshold t maximising sensitivity + specificity - 1 for `score >= t`; the highest one on ties."""
    y, s = _check(y_true, scores)
    _both_classes(y, "Youden threshold")
    t = np.unique(s)                                                    # candidates, ascending
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    tp = n_pos - np.searchsorted(np.sort(s[y == 1]), t, side="left")   # positives with score >= t
    tn = np.searchsorted(np.sort(s[y == 0]), t, side="left")           # negatives with score < t
    j = tp * n_neg + tn * n_pos                                         # exact integer ranking of J
    return float(t[np.flatnonzero(j == j.max())[-1]])


def binary_stats(y_true: Any, scores: Any, threshold: float, level: float = 0.95) -> dict[str, Any]:
    """Sensitivity, specificity, accuracy, PPV, NPV (each with a Wilson `*_ci` [low, high]) and the confusion
    counts at `score >= threshold`."""
    y, s = _check(y_true, scores)
    pred = s >= threshold
    tp, fn = int((pred & (y == 1)).sum()), int((~pred & (y == 1)).sum())
    tn, fp = int((~pred & (y == 0)).sum()), int((pred & (y == 0)).sum())
    out: dict[str, Any] = {"threshold": float(threshold)}
    for name, k, n in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp), ("accuracy", tp + tn, y.size),
                       ("ppv", tp, tp + fp), ("npv", tn, tn + fn)):
        out[name] = k / n if n else math.nan
        out[f"{name}_ci"] = list(wilson_interval(k, n, level))
    return {**out, "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n_pos": tp + fn, "n_neg": tn + fp}


def operating_point(y_true: Any, scores: Any, method: str, target: float = 0.98,
                    threshold: float | None = None, level: float = 0.95) -> dict[str, Any]:
    """Choose a threshold ("max_sensitivity": highest with sensitivity >= target; "youden"; "fixed": the given
    `threshold`) and return {"method", "threshold", ...binary_stats}."""
    if method == "max_sensitivity":
        t = threshold_for_sensitivity(y_true, scores, target)
    elif method == "youden":
        t = youden_threshold(y_true, scores)
    elif method == "fixed":
        if threshold is None:
            raise InputError("operating point method 'fixed' needs a threshold")
        t = float(threshold)
    else:
        raise InputError(f"unknown operating point method {method!r}; use 'max_sensitivity', 'youden' or 'fixed'")
    return {"method": method, **binary_stats(y_true, scores, t, level)}


# ---------------------------------------------------------------- calibration
def _check_prob(y_true: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y, q = _check(y_true, p)
    bad = q[(q < 0) | (q > 1)]
    if bad.size:
        raise InputError(f"probabilities must lie in [0, 1], got {bad[0]:g}")
    return y, q


def brier_score(y_true: Any, p: Any) -> float:
    """Mean squared difference between the predicted probability and the 0/1 outcome."""
    y, q = _check_prob(y_true, p)
    return float(np.mean((q - y) ** 2)) if y.size else math.nan


def reliability_curve(y_true: Any, p: Any, n_bins: int = 10, strategy: str = "uniform") -> dict[str, Any]:
    """Per non-empty bin: edges, mean predicted probability, fraction positive, count (bins as in sklearn's
    `calibration_curve`: right-closed, the first also left-closed), and the count-weighted ECE."""
    y, q = _check_prob(y_true, p)
    if n_bins < 1:
        raise InputError(f"n_bins must be at least 1, got {n_bins}")
    if y.size == 0:
        raise InputError("reliability curve needs at least one case")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.percentile(q, np.linspace(0, 100, n_bins + 1))
    else:
        raise InputError(f"unknown reliability strategy {strategy!r}; use 'uniform' or 'quantile'")
    ids = np.searchsorted(edges[1:-1], q)
    count = np.bincount(ids, minlength=n_bins)
    mean_pred = np.bincount(ids, weights=q, minlength=n_bins)
    frac = np.bincount(ids, weights=y, minlength=n_bins)
    keep = count > 0
    mean_pred, frac = mean_pred[keep] / count[keep], frac[keep] / count[keep]
    ece = float(np.sum(count[keep] * np.abs(frac - mean_pred)) / y.size)
    return {"bin_low": edges[:-1][keep].tolist(), "bin_high": edges[1:][keep].tolist(),
            "mean_predicted": mean_pred.tolist(), "fraction_positive": frac.tolist(),
            "count": count[keep].tolist(), "ece": ece}


# ---------------------------------------------------------------- summary
def summarize(y_true: Any, scores: Any, threshold: float, level: float = 0.95) -> dict[str, Any]:
    """One model's metrics-JSON entry: AUC with DeLong CI and SE, binary stats with Wilson CIs at
    `score >= threshold`, counts, and the Brier score (None unless every score is in [0, 1]). Plain Python
    numbers only; NaN where undefined (e.g. AUC with one class)."""
    y, s = _check(y_true, scores)
    if 0 < y.sum() < y.size:
        ci = auc_ci(y, s, level=level, method="delong")
        auc, low, high, se = ci["auc"], ci["low"], ci["high"], ci["se"]
    else:
        auc = low = high = se = math.nan
    stats = binary_stats(y, s, threshold, level)
    brier = brier_score(y, s) if y.size and ((s >= 0) & (s <= 1)).all() else None
    return {"auc": float(auc), "auc_ci": [float(low), float(high)], "auc_se": float(se), **stats, "brier": brier}


# ---- haemorrhage subtypes (multi-label) ----------------------------------------------------------
SUBTYPE_LABELS = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any")
RSNA_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 2.0)  # the RSNA 2019 challenge's weights: "any" counts twice


def _multilabel(y_true: Any, probs: Any, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 2 or y.shape != p.shape or y.shape[1] != n_labels or y.shape[0] == 0:
        raise InputError(f"multi-label targets and probabilities must both be (N, {n_labels}) with N >= 1, "
                         f"got {y.shape} and {p.shape}")
    if not np.isin(y, (-1.0, 0.0, 1.0)).all():
        raise InputError("multi-label targets must be 0, 1 or -1 (unknown)")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise InputError("multi-label probabilities must be finite and in [0, 1]")
    return y, p


def rsna_log_loss(y_true: Any, probs: Any, weights: Any = RSNA_WEIGHTS, eps: float = 1e-15) -> float:
    """The RSNA 2019 metric: weighted multi-label log loss. y_true, probs (N, L) in `SUBTYPE_LABELS`
    order (five subtypes, then "any"); per case sum_j w_j * BCE_j / sum_j w_j, averaged over cases.
    Probabilities are clipped to [eps, 1 - eps]. Unknown targets (-1) leave their term and its
    weight out of the case's sums; a case with no known target is left out (nan if none is known)."""
    w = np.asarray(weights, dtype=np.float64)
    y, p = _multilabel(y_true, probs, w.size)
    p = np.clip(p, eps, 1.0 - eps)
    known = (y >= 0).astype(np.float64)
    yk = np.clip(y, 0.0, 1.0)
    bce = -(yk * np.log(p) + (1.0 - yk) * np.log1p(-p)) * known  # (N, L)
    total = known @ w
    use = total > 0
    return float(np.mean((bce @ w)[use] / total[use])) if use.any() else float("nan")


def subtype_aucs(y_true: Any, probs: Any, names: tuple[str, ...] = SUBTYPE_LABELS, level: float = 0.95
                 ) -> dict[str, dict[str, Any] | None]:
    """Per-label ROC AUC with its DeLong CI: {name: {"auc", "auc_ci", "n_pos", "n_neg"}} over the
    cases whose target is known (not -1), or None for a label whose known cases are all of one
    class (no AUC exists). "auc_ci" is None when DeLong gives no interval (a single case of a class)."""
    y, p = _multilabel(y_true, probs, len(names))
    out: dict[str, dict[str, Any] | None] = {}
    for j, name in enumerate(names):
        known = y[:, j] >= 0
        yj, pj = y[known, j].astype(np.int64), p[known, j]
        n_pos = int(yj.sum())
        if n_pos in (0, yj.size):
            out[name] = None
            continue
        ci = auc_ci(yj, pj, level=level)
        bounds = [ci["low"], ci["high"]] if np.isfinite([ci["low"], ci["high"]]).all() else None  # one case of a class
        out[name] = {"auc": ci["auc"], "auc_ci": bounds, "n_pos": n_pos, "n_neg": int(yj.size - n_pos)}
    return out


def subtype_metrics(targets: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """{"subtypes": {label: {"auc", "auc_ci" (95%, DeLong), "n_pos", "n_neg"}}, "rsna_log_loss"} from
    targets (N, 6) (-1 unknown, left out) and probabilities (N, 6) in `SUBTYPE_LABELS` order. A label
    whose known cases are all of one class keeps its counts with auc and auc_ci None; a CI that
    DeLong cannot give (a single positive or negative case) is None."""
    per_label = subtype_aucs(targets, probs)
    out = {}
    for j, name in enumerate(SUBTYPE_LABELS):
        m = per_label[name]  # its auc_ci is None when DeLong gives no interval
        if m is None:
            known = targets[:, j][targets[:, j] >= 0]
            m = {"auc": None, "auc_ci": None, "n_pos": int(known.sum()), "n_neg": int((known == 0).sum())}
        out[name] = m
    return {"subtypes": out, "rsna_log_loss": rsna_log_loss(targets, probs)}
