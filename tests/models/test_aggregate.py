"""Slice-aggregation baselines: max, 95th percentile, zero-padded feature SVM."""
from __future__ import annotations

import numpy as np
import pytest

from ichdet.errors import InputError
from ichdet.models import BASELINES, FeatureSVM, pad_features, slice_max, slice_p95


def test_slice_max_and_p95():
    p = np.array([0.1, 0.9, 0.3, 0.5, 0.2])
    assert slice_max(p) == 0.9
    assert slice_p95(p) == pytest.approx(np.percentile(p, 95))
    assert slice_p95(p) == pytest.approx(0.5 + 0.8 * 0.4)  # rank 0.95*4 = 3.8 between 0.5 and 0.9
    rng = np.random.default_rng(0)
    q = rng.random(37)
    assert slice_p95(q) == np.percentile(q, 95)
    assert slice_p95([0.4]) == 0.4
    with pytest.raises(InputError, match=r"got shape \(0,\)"):
        slice_max([])
    with pytest.raises(InputError, match=r"got shape \(2, 2\)"):
        slice_p95(np.zeros((2, 2)))


def test_pad_even_and_odd():
    f = np.arange(1, 7, dtype=float).reshape(3, 2)  # rows [1,2],[3,4],[5,6]
    even = pad_features(f, 5)  # 2 extra: one each side
    np.testing.assert_array_equal(even, [[0, 0], [1, 2], [3, 4], [5, 6], [0, 0]])
    odd = pad_features(f, 6)  # 3 extra: one before, two after
    np.testing.assert_array_equal(odd, [[0, 0], [1, 2], [3, 4], [5, 6], [0, 0], [0, 0]])
    same = pad_features(f, 3)
    np.testing.assert_array_equal(same, f)
    assert same is not f


def test_crop_centre():
    f = np.arange(6, dtype=float).reshape(6, 1)
    np.testing.assert_array_equal(pad_features(f, 2).ravel(), [2, 3])  # drop 2 at start, 2 at end
    np.testing.assert_array_equal(pad_features(f, 3).ravel(), [1, 2, 3])  # drop 1 at start, 2 at end
    with pytest.raises(InputError, match=r"got shape \(6,\)"):
        pad_features(f.ravel(), 3)
    with pytest.raises(InputError, match="got 0"):
        pad_features(f, 0)


def scans(n: int = 24, F: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    feats = []
    for label in y:
        z = int(rng.integers(4, 9))
        m = rng.normal(size=(z, F)) * 0.1
        m[:, 0] += 3.0 * label
        feats.append(m)
    return feats, y


def test_feature_svm_fit_predict_save(tmp_path):
    feats, y = scans()
    model = FeatureSVM().fit(feats, y)
    assert model.length_ == max(len(f) for f in feats)
    assert model.C_ in model.Cs and model.n_slice_features_ == 3
    assert (model.predict(feats) == y).all()
    d = model.decision_function(feats)
    assert d.shape == (24,)
    assert model.predict_proba(feats).shape == (24, 2)
    long_scan = np.ones((20, 3)) * 3.0
    assert model.predict([long_scan]).shape == (1,)  # longer scans are centre-cropped
    back = FeatureSVM.load(model.save(tmp_path / "fsvm.joblib"))
    np.testing.assert_array_equal(back.decision_function(feats), d)
    fixed = FeatureSVM(length=10, C=1.0).fit(feats, y)
    assert fixed.length_ == 10 and fixed.svm_.n_features_in_ == 30


def test_feature_svm_bad_inputs():
    feats, y = scans(6)
    with pytest.raises(InputError, match="one F"):
        FeatureSVM().fit(feats[:-1] + [np.zeros((4, 5))], y)
    model = FeatureSVM(C=1.0).fit(feats, y)
    with pytest.raises(InputError, match=r"F = 3.*\(4, 2\)"):
        model.predict([np.zeros((4, 2))])


def test_baselines_listed():
    assert set(BASELINES) == {"slice_max", "slice_p95", "feature_svm"}
    assert BASELINES["slice_max"]([0.2, 0.7]) == 0.7
