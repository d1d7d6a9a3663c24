"""SVMHead (estimator contract, inner-CV C, calibrated probabilities, save/load)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from ichdet.errors import InputError
from ichdet.models import SVMHead


def separable(n: int = 60, f: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, f))
    X[:, 0] += np.where(y == 1, 4.0, -4.0)
    return X, y


def noisy(n: int = 80, f: int = 4, seed: int = 1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, f))
    X[:, 0] += y * 1.0
    return X, y


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_separable_problem_is_solved(kernel):
    X, y = separable()
    head = SVMHead(kernel=kernel).fit(X, y)
    assert head.predict(X).tolist() == y.tolist()
    assert (head.predict(X) == y).mean() == 1.0
    assert head.C_ in head.Cs
    assert list(head.classes_) == [0, 1]
    assert head.decision_function(X).shape == (60,)


def test_c_chosen_by_inner_cv_on_grid():
    X, y = noisy()
    head = SVMHead(Cs=(0.001, 1.0, 1000.0), inner_folds=3).fit(X, y)
    scores = head.cv_results_["mean_test_score"]
    assert head.C_ == (0.001, 1.0, 1000.0)[int(np.argmax(scores))]
    assert len(head.cv_results_["split2_test_score"]) == 3
    fixed = SVMHead(C=0.5).fit(X, y)
    assert fixed.C_ == 0.5 and not hasattr(fixed, "cv_results_")


def test_probabilities_monotone_in_decision():
    X, y = noisy()
    head = SVMHead().fit(X, y)
    Xt = np.random.default_rng(5).normal(size=(200, 4)) * 2
    d = head.decision_function(Xt)
    p = head.predict_proba(Xt)
    assert p.shape == (200, 2)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    order = np.argsort(d)
    assert np.all(np.diff(p[order, 1]) >= 0)
    assert head.proba_slope_ > 0
    assert np.all((p > 0) & (p < 1))


def test_save_load_round_trip(tmp_path):
    X, y = noisy()
    head = SVMHead(kernel="rbf").fit(X, y)
    path = head.save(tmp_path / "sub" / "svm.joblib")
    back = SVMHead.load(path)
    np.testing.assert_array_equal(back.decision_function(X), head.decision_function(X))
    np.testing.assert_array_equal(back.predict_proba(X), head.predict_proba(X))
    assert [p.name for p in path.parent.iterdir()] == ["svm.joblib"]  # no temp files left


def test_load_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        SVMHead.load(tmp_path / "missing.joblib")
    import joblib
    joblib.dump({"a": 1}, tmp_path / "dict.joblib")
    with pytest.raises(InputError, match="expected a saved SVMHead, got dict"):
        SVMHead.load(tmp_path / "dict.joblib")


def test_multiclass():
    rng = np.random.default_rng(0)
    y = np.repeat(["a", "b", "c"], 20)
    centers = {"a": (5, 0), "b": (0, 5), "c": (-5, -5)}
    X = np.array([centers[c] for c in y]) + rng.normal(size=(60, 2)) * 0.5
    head = SVMHead(kernel="rbf").fit(X, y)
    assert list(head.classes_) == ["a", "b", "c"]
    assert head.decision_function(X).shape == (60, 3)
    assert (head.predict(X) == y).all()
    p = head.predict_proba(X)
    assert p.shape == (60, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert (head.classes_[p.argmax(axis=1)] == y).all()


def test_one_class_is_input_error():
    X = np.zeros((10, 3))
    with pytest.raises(InputError, match=r"at least two classes.*only class 1.0 in 10 samples"):
        SVMHead().fit(X, np.ones(10))


def test_tiny_minority_reduces_folds():
    X, y = separable(20)
    y = np.zeros(20, int)
    y[:2] = 1
    X[:2, 0] += 10
    head = SVMHead(inner_folds=5).fit(X, y)  # 2 positives -> 2 inner folds
    assert len([k for k in head.cv_results_ if k.startswith("split") and k.endswith("_test_score")]) == 2
    y[1] = 0
    with pytest.warns(UserWarning, match="too few for inner CV"):
        head = SVMHead().fit(X, y)
    assert head.C_ == 1.0


def test_bad_inputs():
    X, y = separable()
    with pytest.raises(InputError, match=r"got shape \(60,\)"):
        SVMHead().fit(X[:, 0], y)
    with pytest.raises(InputError, match=r"y shape \(59,\)"):
        SVMHead().fit(X, y[:-1])
    with pytest.raises(InputError, match="kernel"):
        SVMHead(kernel="poly").fit(X, y)
    head = SVMHead(C=1.0).fit(X, y)
    with pytest.raises(InputError, match=r"fitted on 5 features, got shape \(2, 4\)"):
        head.decision_function(np.zeros((2, 4)))


def test_sklearn_contract():
    head = SVMHead(kernel="rbf", C=2.0)
    assert clone(head).get_params() == head.get_params()
    assert not any(k.endswith("_") for k in vars(head))


def test_probabilities_are_fit_platt_on_the_inner_cv_decision_values():
    """One Platt fit in the package: the SVM's is `fit_platt` on its out-of-fold decision values."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from ichdet.models.platt import fit_platt

    X, y = noisy()
    head = SVMHead(C=1.0, inner_folds=4, random_state=3).fit(X, y)
    cv = StratifiedKFold(4, shuffle=True, random_state=3)
    d = cross_val_predict(head._pipeline(1.0), X, y, cv=cv, method="decision_function")
    a, c = fit_platt(y, d)
    assert (head.proba_slope_, head.proba_intercept_) == pytest.approx((a, c), rel=1e-9)
    want = 1 / (1 + np.exp(-(a * head.decision_function(X) + c)))
    np.testing.assert_allclose(head.predict_proba(X)[:, 1], want, rtol=1e-9)
