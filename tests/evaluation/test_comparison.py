"""ichdet.evaluation.comparison: several models on the same cases (AUC + CIs, operating points, DeLong)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from ichdet.evaluation.comparison import compare, operating_stats, roc_curves
from ichdet.errors import InputError
from ichdet.metrics import auc_ci, binary_stats, delong_test, summarize, wilson_interval


@pytest.fixture(scope="module")
def three_models():
    rng = np.random.default_rng(7)
    y = np.r_[np.ones(30, int), np.zeros(40, int)]
    a = np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.2, y.size), 0, 1)  # good
    b = np.clip(0.5 + 0.10 * (y - 0.5) + rng.normal(0, 0.2, y.size), 0, 1)  # weaker
    c = rng.uniform(0, 1, y.size)  # chance
    return y, {"a": a, "b": b, "c": c}


def test_compare_numbers_equal_the_metric_functions_and_sklearn(three_models):
    y, scores = three_models
    thresholds = {"a": 0.5, "b": 0.45, "c": 0.6}
    out = compare(y, scores, thresholds, reference="a", n_boot=300, seed=3)
    assert list(out) == ["a", "b", "c"]
    for name, s in scores.items():
        m = out[name]
        assert m["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        ref = summarize(y, s, thresholds[name])
        for key in ("auc_ci", "auc_se", "sensitivity", "specificity", "accuracy", "ppv", "npv", "tp", "fp",
                    "tn", "fn", "n_pos", "n_neg", "threshold", "brier", "sensitivity_ci"):
            assert m[key] == ref[key], key
        st = binary_stats(y, s, thresholds[name])
        assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (st["tp"], st["fp"], st["tn"], st["fn"])
        assert m["sensitivity"] == st["tp"] / 30 and m["specificity"] == st["tn"] / 40
        boot = auc_ci(y, s, method="bootstrap", n_boot=300, seed=3)
        assert m["auc_ci_bootstrap"] == [boot["low"], boot["high"]]
        assert set(m["delong_pairwise"]) == set(scores) - {name}
        for other, p in m["delong_pairwise"].items():
            assert p == pytest.approx(delong_test(y, s, scores[other])["p"], abs=1e-15)
            assert p == pytest.approx(out[other]["delong_pairwise"][name], abs=1e-12)  # symmetric
    # the reference model has no p-value against itself; the others are tested against it
    assert out["a"]["delong_p"] is None and out["a"]["delong_diff"] is None
    for name in ("b", "c"):
        t = delong_test(y, scores[name], scores["a"])
        assert out[name]["delong_p"] == t["p"] and out[name]["delong_diff"] == t["diff"]
        assert out[name]["delong_diff"] == pytest.approx(out[name]["auc"] - out["a"]["auc"], abs=1e-12)
    assert out["c"]["delong_p"] < 0.05  # chance vs a good model
    # without a reference there are no delong_p keys, only the pairwise ones
    plain = compare(y, scores, thresholds, n_boot=50)
    assert all("delong_p" not in m and "delong_diff" not in m for m in plain.values())
    assert plain["b"]["delong_pairwise"] == out["b"]["delong_pairwise"]


def test_operating_stats_pools_per_case_thresholds_by_hand():
    # fold A (cases 0-3) chose threshold 0.5, fold B (cases 4-7) chose 0.2
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    s = np.array([0.6, 0.4, 0.3, 0.55, 0.25, 0.22, 0.3, 0.15])
    t = np.array([0.5, 0.5, 0.5, 0.5, 0.2, 0.2, 0.2, 0.2])
    # decisions: T F F T | T T T F -> tp 3 (0, 4, 5), fn 1 (1), fp 2 (3, 6), tn 2 (2, 7)
    m = operating_stats(y, s, t)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 2, 2)
    assert (m["n_pos"], m["n_neg"]) == (4, 4)
    assert m["sensitivity"] == 0.75 and m["specificity"] == 0.5 and m["accuracy"] == 5 / 8
    assert m["ppv"] == 3 / 5 and m["npv"] == 2 / 3
    assert m["sensitivity_ci"] == list(wilson_interval(3, 4)) and m["accuracy_ci"] == list(wilson_interval(5, 8))
    assert m["threshold"] == [0.2, 0.5]
    # the AUC does not depend on thresholds: the pooled scores' AUC
    assert m["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["auc_ci"] == summarize(y, s, 0.5)["auc_ci"]
    # one shared threshold is plain `summarize`; a per-case array of one value gives the same figures
    assert operating_stats(y, s, 0.3) == summarize(y, s, 0.3)
    same = operating_stats(y, s, np.full(8, 0.3))
    for key in ("tp", "fp", "tn", "fn", "sensitivity", "specificity", "accuracy", "auc"):
        assert same[key] == summarize(y, s, 0.3)[key], key
    assert same["threshold"] == [0.3]


def test_operating_stats_and_compare_errors(three_models):
    y, scores = three_models
    with pytest.raises(InputError) as e:
        operating_stats(y[:8], scores["a"][:8], np.array([0.5, 0.5, 0.5]))
    assert str(e.value) == "per-case thresholds have shape (3,), scores (8,)"
    with pytest.raises(InputError) as e:
        compare(y, {"a": scores["a"], "b": scores["b"]}, {"a": 0.5, "b": 0.5}, reference="z")
    assert str(e.value) == "reference model 'z' is not among ['a', 'b']"
    with pytest.raises(InputError) as e:  # the short model listed first
        compare(y, {"b": scores["b"][:-5], "a": scores["a"]}, {"a": 0.5, "b": 0.5})
    assert str(e.value) == "model 'b' has 65 scores for 70 cases"
    with pytest.raises(InputError) as e:  # a single model
        compare(y, {"b": scores["b"][:-5]}, {"b": 0.5}, reference="b")
    assert str(e.value) == "model 'b' has 65 scores for 70 cases"


def test_compare_length_mismatch_names_the_model_in_any_order(three_models):
    y, scores = three_models
    with pytest.raises(InputError) as e:
        compare(y, {"a": scores["a"], "b": scores["b"][:-5]}, {"a": 0.5, "b": 0.5})
    assert str(e.value) == "model 'b' has 65 scores for 70 cases"


def test_compare_with_per_case_thresholds(three_models):
    y, scores = three_models
    t = np.where(np.arange(y.size) % 2 == 0, 0.4, 0.6)
    out = compare(y, {"a": scores["a"], "b": scores["b"]}, {"a": t, "b": 0.5}, reference="b", n_boot=50)
    direct = operating_stats(y, scores["a"], t)
    pred = scores["a"] >= t
    assert out["a"]["tp"] == int((pred & (y == 1)).sum()) == direct["tp"]
    assert out["a"]["fp"] == int((pred & (y == 0)).sum()) == direct["fp"]
    assert out["a"]["threshold"] == [0.4, 0.6] and out["b"]["threshold"] == 0.5
    assert out["b"]["delong_p"] is None and out["a"]["delong_p"] == delong_test(y, scores["a"], scores["b"])["p"]


def test_roc_curves_for_the_figure(three_models):
    y, scores = three_models
    m = compare(y, scores, {"a": 0.5, "b": 0.5, "c": 0.5}, n_boot=50)
    curves = roc_curves(y, scores, m, labels={"a": "Model A"}, band=False)
    assert [c["name"] for c in curves] == ["Model A", "b", "c"]
    for c, (name, s) in zip(curves, scores.items()):
        fpr, tpr, _ = roc_curve(y, s)
        np.testing.assert_array_equal(c["fpr"], fpr)
        np.testing.assert_array_equal(c["tpr"], tpr)
        assert c["auc"] == m[name]["auc"] and c["auc_ci"] == m[name]["auc_ci"] and c["band"] is None
        assert c["point"] == {"fpr": 1 - m[name]["specificity"], "tpr": m[name]["sensitivity"]}
    banded = roc_curves(y, {"a": scores["a"]}, m, n_boot=40, seed=1)[0]["band"]
    assert banded["fpr"].shape == banded["low"].shape == banded["high"].shape == (101,)
    assert (banded["low"] <= banded["tpr"] + 1e-12).all() and (banded["tpr"] <= banded["high"] + 1e-12).all()
