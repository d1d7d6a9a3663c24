"""Metrics: AUC and DeLong variance against references, CIs, tests, operating points, calibration."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve

from ichdet.errors import InputError
from ichdet.metrics import (auc_ci, binary_stats, bootstrap_auc_ci, brier_score, delong_auc, delong_covariance,
                            delong_test, operating_point, reliability_curve, roc_auc, roc_band, summarize,
                            threshold_for_sensitivity, wilson_interval, youden_threshold)


def _data(n: int, seed: int, shift: float = 1.0, decimals: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Labels and rounded (so tied) scores; positives shifted up by `shift`."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    y[:2] = (0, 1)  # both classes, always
    return y, np.round(rng.normal(size=n) + shift * y, decimals)


def _delong_reference(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """O(n^2) structural components (DeLong et al. 1988) for score rows s (k, n)."""
    s = np.atleast_2d(s)
    pos, neg = s[:, y == 1], s[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    k = s.shape[0]
    psi = np.array([[[1.0 if a > b else 0.5 if a == b else 0.0 for b in neg[r]] for a in pos[r]] for r in range(k)])
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)  # (k, m), (k, n)
    aucs = psi.mean(axis=(1, 2))
    s10 = np.array([[np.sum((v10[i] - aucs[i]) * (v10[j] - aucs[j])) / (m - 1) for j in range(k)] for i in range(k)])
    s01 = np.array([[np.sum((v01[i] - aucs[i]) * (v01[j] - aucs[j])) / (n - 1) for j in range(k)] for i in range(k)])
    return aucs, s10 / m + s01 / n


# Hanley & McNeil (1982) Radiology 143:29, Table 1: ratings 1..5 (5 = definitely abnormal).
HM_Y = np.r_[np.zeros(58, int), np.ones(51, int)]
HM_S = np.r_[np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2]), np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])].astype(float)


# ---------------------------------------------------------------- AUC and DeLong
@pytest.mark.parametrize("n", [5, 40, 333, 2000])
def test_auc_matches_sklearn_with_ties(n):
    y, s = _data(n, seed=n)
    auc, _ = delong_auc(y, s)
    assert auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert roc_auc(y, s) == pytest.approx(auc, abs=1e-12)


@pytest.mark.parametrize("n,decimals", [(6, 0), (57, 1), (150, 0), (300, 3)])
def test_delong_variance_matches_structural_components(n, decimals):
    y, s = _data(n, seed=7 + n, decimals=decimals)
    ref_auc, ref_cov = _delong_reference(y, s)
    auc, var = delong_auc(y, s)
    assert auc == pytest.approx(ref_auc[0], abs=1e-12)
    assert var == pytest.approx(ref_cov[0, 0], abs=1e-12)


def test_delong_covariance_matches_structural_components_paired():
    y, s1 = _data(120, seed=3, decimals=1)
    rng = np.random.default_rng(4)
    s = np.vstack([s1, np.round(s1 + rng.normal(size=s1.size), 1), np.round(rng.normal(size=s1.size), 0)])
    ref_auc, ref_cov = _delong_reference(y, s)
    aucs, cov = delong_covariance(y, s)
    assert aucs.shape == (3,) and cov.shape == (3, 3)
    np.testing.assert_allclose(aucs, ref_auc, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=0, atol=1e-12)


def test_hanley_mcneil_rating_example():
    auc, var = delong_auc(HM_Y, HM_S)
    assert auc == pytest.approx(0.8932, abs=5e-5)  # published A = 0.893
    assert round(auc, 3) == 0.893
    # We get DeLong SE = 0.03072; Hanley-McNeil's exponential-approximation SE is 0.0326 (published).
    assert math.sqrt(var) == pytest.approx(0.03072, abs=5e-5)
    assert abs(math.sqrt(var) - 0.0326) < 0.003


def test_delong_ci():
    ci = auc_ci(HM_Y, HM_S)
    z = 1.959963984540054
    assert ci["method"] == "delong" and ci["level"] == 0.95
    assert ci["se"] == pytest.approx(math.sqrt(delong_auc(HM_Y, HM_S)[1]), abs=1e-15)
    assert ci["low"] == pytest.approx(ci["auc"] - z * ci["se"], abs=1e-12)
    assert ci["high"] == pytest.approx(ci["auc"] + z * ci["se"], abs=1e-12)
    narrow = auc_ci(HM_Y, HM_S, level=0.5)
    assert ci["low"] < narrow["low"] < narrow["high"] < ci["high"]
    perfect = auc_ci([0, 0, 1, 1, 0, 1], [0.1, 0.2, 0.8, 0.9, 0.3, 0.95])
    assert perfect["auc"] == 1.0 and perfect["high"] == 1.0 and perfect["low"] <= 1.0  # clipped
    single = auc_ci([0, 1, 1], [0.1, 0.5, 0.3])  # one negative: DeLong variance undefined
    assert single["auc"] == 1.0 and all(math.isnan(single[k]) for k in ("se", "low", "high"))


def test_delong_test():
    y, a = _data(200, seed=11)
    same = delong_test(y, a, a.copy())
    assert same["p"] == 1.0 and same["z"] == 0.0 and same["diff"] == 0.0 and same["se"] == 0.0
    perfect = y + 0.01 * np.random.default_rng(0).random(y.size)  # separates perfectly
    r = delong_test(y, perfect, a)
    assert r["auc_a"] == 1.0 and r["diff"] == pytest.approx(1.0 - roc_auc_score(y, a))
    assert r["z"] > 3 and r["p"] < 1e-3
    b = np.round(a + np.random.default_rng(5).normal(size=a.size), 1)
    ab, ba = delong_test(y, a, b), delong_test(y, b, a)
    assert ab["z"] == pytest.approx(-ba["z"], abs=1e-12) and ab["p"] == pytest.approx(ba["p"], abs=1e-12)
    assert ab["diff"] == pytest.approx(-ba["diff"], abs=1e-15) and 0 < ab["p"] < 1
    _, cov = delong_covariance(y, np.vstack([a, b]))
    assert ab["se"] == pytest.approx(math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), abs=1e-15)


# ---------------------------------------------------------------- bootstrap
def test_bootstrap_ci():
    y, s = _data(150, seed=21)
    ci = auc_ci(y, s, method="bootstrap", n_boot=500, seed=3)
    assert ci["method"] == "bootstrap" and ci["low"] < ci["auc"] < ci["high"]
    assert ci == auc_ci(y, s, method="bootstrap", n_boot=500, seed=3)
    assert ci == bootstrap_auc_ci(y, s, n_boot=500, seed=3)
    assert ci != auc_ci(y, s, method="bootstrap", n_boot=500, seed=4)


def test_bootstrap_aucs_equal_sklearn_on_the_same_resamples():
    from ichdet.metrics import _bootstrap_aucs, _resamples
    y, s = _data(90, seed=23, decimals=1)
    rows = np.vstack(list(_resamples(y, 30, seed=9)))
    assert rows.shape == (30, 90) and (y[rows].sum(axis=1) == y.sum()).all()  # stratified
    expected = [roc_auc_score(y[r], s[r]) for r in rows]
    np.testing.assert_allclose(_bootstrap_aucs(y, s, 30, seed=9), expected, rtol=0, atol=1e-12)


def test_bootstrap_width_close_to_delong():
    y, s = _data(1500, seed=22, decimals=2)
    boot = auc_ci(y, s, method="bootstrap", n_boot=1000, seed=0)
    se = math.sqrt(delong_auc(y, s)[1])
    assert boot["high"] - boot["low"] == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert boot["se"] == pytest.approx(se, rel=0.2)


def test_roc_band():
    y, s = _data(200, seed=31, decimals=6)  # essentially no ties: the ROC is a staircase
    band = roc_band(y, s, n_boot=200, seed=1)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    grid = np.linspace(0, 1, 101)
    step = np.array([tpr[fpr <= g].max() for g in grid])
    np.testing.assert_array_equal(band["fpr"], grid)
    np.testing.assert_allclose(band["tpr"], step, atol=1e-12)
    assert all(isinstance(band[k], np.ndarray) and band[k].shape == (101,) for k in ("fpr", "tpr", "low", "high"))
    assert (band["low"] <= band["high"]).all() and band["high"][-1] == 1.0 and band["low"][0] >= 0.0
    inside = (band["low"] <= band["tpr"] + 1e-12) & (band["tpr"] <= band["high"] + 1e-12)
    assert inside.mean() > 0.9
    again = roc_band(y, s, fpr_grid=[0.1, 0.5], n_boot=200, seed=1)
    np.testing.assert_allclose(again["low"], band["low"][[10, 50]])


def test_roc_band_ties_follow_diagonal():
    # one positive and one negative tied at 0.5: the curve goes diagonally from (0, 0.5) to (0.5, 1)
    band = roc_band([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9], fpr_grid=[0, 0.25, 0.5, 1], n_boot=20)
    np.testing.assert_allclose(band["tpr"], [0.5, 0.75, 1.0, 1.0])


# ---------------------------------------------------------------- operating points
@pytest.mark.parametrize("k,n,low,high", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0),
                                          (1, 10, 0.0179, 0.4042)])
def test_wilson_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_edge_cases():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert wilson_interval(5, 10, level=0.99)[0] < wilson_interval(5, 10)[0]
    with pytest.raises(InputError, match=r"need 0 <= k <= n for a proportion, got k=11, n=10"):
        wilson_interval(11, 10)


def test_binary_stats_keeps_keys_and_adds_wilson():
    y = [1, 1, 1, 0, 0, 0, 0, 1]
    s = [0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.6]
    st = binary_stats(y, s, 0.5)
    assert (st["tp"], st["fn"], st["tn"], st["fp"], st["n_pos"], st["n_neg"]) == (3, 1, 3, 1, 4, 4)
    assert st["sensitivity"] == 0.75 and st["specificity"] == 0.75 and st["accuracy"] == 0.75
    assert st["ppv"] == 0.75 and st["npv"] == 0.75 and st["threshold"] == 0.5
    assert st["sensitivity_ci"] == list(wilson_interval(3, 4)) and st["accuracy_ci"] == list(wilson_interval(6, 8))
    none = binary_stats(y, s, 2.0)
    assert math.isnan(none["ppv"]) and all(math.isnan(v) for v in none["ppv_ci"])


def test_youden_hand_built():
    # t=0.6 -> sens 3/4, spec 4/4 (J=0.75); t=0.35 -> sens 1, spec 3/4 (J=0.75): tie, take the highest
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.4, 0.35, 0.6, 0.7, 0.8]
    assert youden_threshold(y, s) == 0.6
    assert youden_threshold([0, 0, 1, 1, 0, 1], [1, 2, 3, 4, 5, 6]) == 3.0  # J = 2/3 at t=3, 1/3 at t=6
    op = operating_point(y, s, "youden")
    assert op["method"] == "youden" and op["threshold"] == 0.6
    assert op["sensitivity"] == 0.75 and op["specificity"] == 1.0


def test_threshold_for_sensitivity_and_operating_points():
    y = [1] * 10 + [0] * 5
    s = list(np.arange(10, 0, -1) / 10) + [0.05, 0.15, 0.25, 0.0, 0.5]
    assert threshold_for_sensitivity(y, s, 0.9) == pytest.approx(0.2)
    assert threshold_for_sensitivity(y, s, 0.98) == pytest.approx(0.1)
    assert threshold_for_sensitivity(y, s, 0.5) == pytest.approx(0.6)
    op = operating_point(y, s, "max_sensitivity", target=0.9)
    assert op["threshold"] == pytest.approx(0.2) and op["sensitivity"] == 0.9
    fixed = operating_point(y, s, "fixed", threshold=0.55)
    assert fixed == {"method": "fixed", **binary_stats(y, s, 0.55)}
    with pytest.raises(InputError, match="needs a threshold"):
        operating_point(y, s, "fixed")
    with pytest.raises(InputError, match="unknown operating point method 'best'"):
        operating_point(y, s, "best")
    with pytest.raises(InputError, match="without positive cases"):
        threshold_for_sensitivity([0, 0], [0.1, 0.2])


# ---------------------------------------------------------------- calibration
def test_brier_matches_sklearn():
    rng = np.random.default_rng(41)
    p = rng.random(300)
    y = (rng.random(300) < p).astype(int)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-15)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("n_bins", [5, 10])
def test_reliability_matches_sklearn(strategy, n_bins):
    rng = np.random.default_rng(42)
    p = np.r_[rng.beta(2, 5, 400), [0.0, 0.2, 1.0]]  # includes exact bin edges
    y = (rng.random(p.size) < p).astype(int)
    rc = reliability_curve(y, p, n_bins=n_bins, strategy=strategy)
    frac, mean = calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
    np.testing.assert_allclose(rc["fraction_positive"], frac, atol=1e-12)
    np.testing.assert_allclose(rc["mean_predicted"], mean, atol=1e-12)
    counts = np.array(rc["count"])
    assert counts.sum() == p.size and (counts > 0).all()
    lo, hi = np.array(rc["bin_low"]), np.array(rc["bin_high"])
    assert ((lo <= np.array(rc["mean_predicted"])) & (np.array(rc["mean_predicted"]) <= hi)).all()
    ece = float(np.sum(counts * np.abs(frac - mean)) / p.size)
    assert rc["ece"] == pytest.approx(ece, abs=1e-12)


def test_reliability_empty_bins_dropped():
    rc = reliability_curve([0, 1, 1, 0, 1], [0.05, 0.95, 0.92, 0.08, 0.9], n_bins=10)
    assert rc["bin_low"] == pytest.approx([0.0, 0.8, 0.9]) and rc["count"] == [2, 1, 2]  # 0.9 is in (0.8, 0.9]
    assert rc["fraction_positive"] == [0.0, 1.0, 1.0]
    assert rc["ece"] == pytest.approx((2 * 0.065 + 0.1 + 2 * 0.065) / 5)


# ---------------------------------------------------------------- errors
def test_error_messages():
    with pytest.raises(InputError) as e:
        auc_ci([1, 1, 1], [0.1, 0.2, 0.3])
    assert str(e.value) == "AUC confidence interval needs both classes, got 3 positives and 0 negatives"
    with pytest.raises(InputError) as e:
        auc_ci([0, 0], [0.1, 0.2], method="bootstrap")
    assert str(e.value) == "AUC confidence interval needs both classes, got 0 positives and 2 negatives"
    with pytest.raises(InputError) as e:
        delong_auc([0, 1, 1], [0.1, 0.2])
    assert str(e.value) == "labels and scores differ in length: 3 vs 2"
    with pytest.raises(InputError) as e:
        brier_score([0, 1], [0.5, 1.5])
    assert str(e.value) == "probabilities must lie in [0, 1], got 1.5"
    with pytest.raises(InputError) as e:
        reliability_curve([0, 1], [-0.25, 0.5])
    assert str(e.value) == "probabilities must lie in [0, 1], got -0.25"
    with pytest.raises(InputError) as e:
        auc_ci([0, 1], [0.1, 0.2], method="exact")
    assert str(e.value) == "unknown AUC CI method 'exact'; use 'delong' or 'bootstrap'"
    with pytest.raises(InputError) as e:
        delong_test([0, 1, 1], [0.1, 0.2, 0.3], [0.1, 0.2])
    assert str(e.value) == "the two models' scores differ in length: 3 vs 2"
    with pytest.raises(InputError, match="confidence level must lie strictly between 0 and 1, got 95"):
        auc_ci([0, 1], [0.1, 0.2], level=95)


# ---------------------------------------------------------------- summary
def test_summarize_json_and_consistent():
    y, s = HM_Y, HM_S / 5
    out = summarize(y, s, threshold=0.6)
    back = json.loads(json.dumps(out))
    assert back == out
    ci = auc_ci(y, s)
    assert out["auc"] == ci["auc"] and out["auc_ci"] == [ci["low"], ci["high"]] and out["auc_se"] == ci["se"]
    st = binary_stats(y, s, 0.6)
    for key, value in st.items():
        assert out[key] == value
    assert out["brier"] == pytest.approx(brier_score(y, s))
    assert (out["tp"], out["fp"], out["tn"], out["fn"]) == (46, 19, 39, 5)
    assert all(type(v) in (float, int, list) for v in out.values())
    assert summarize(y, HM_S, threshold=3)["brier"] is None  # ratings are not probabilities
    one = summarize([1, 1], [0.2, 0.9], 0.5)
    assert math.isnan(one["auc"]) and all(math.isnan(v) for v in one["auc_ci"]) and one["sensitivity"] == 0.5
    json.dumps(one)
