"""Saved SVM heads stay loadable: svm.joblib files as bundles hold them (`SVMHead` for kind
"alexnet_svm", `FeatureSVM` for "feature_svm"), written by ichdet before FeatureSVM reused
SVMHead's save/load and before the SVM's Platt fit became `fit_platt`, load with `load_bundle`'s
classes and predict as a fresh fit does, given the Platt map they hold. With C
fixed (no timed inner CV) fits are deterministic, so the same fit writes the same bytes on one machine.

Regenerate the files (only on purpose: they stand for bundles users already have):
`python tests/models/test_saved_svm.py`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
import sklearn

from ichdet.errors import InputError
from ichdet.models import FeatureSVM, SVMHead

DATA = Path(__file__).parent / "data"
FILES = {"feature_svm": FeatureSVM, "svm_head": SVMHead}


def fitted() -> dict[str, tuple[object, object]]:
    """name -> (estimator fitted on fixed data with C=1, the inputs it scores)."""
    rng = np.random.default_rng(7)
    y = np.arange(20) % 2
    scans = []
    for label in y:
        m = rng.normal(size=(int(rng.integers(3, 7)), 4)) * 0.5
        m[:, 0] += 1.0 * label
        scans.append(m)
    X = np.stack([m.mean(0) for m in scans])
    return {"feature_svm": (FeatureSVM(C=1.0, random_state=0).fit(scans, y), scans),
            "svm_head": (SVMHead(kernel="linear", C=1.0, random_state=0).fit(X, y), X)}


def versions() -> dict[str, str]:
    return {"numpy": np.__version__, "scikit-learn": sklearn.__version__, "joblib": joblib.__version__}


@pytest.mark.parametrize("name", sorted(FILES))
def test_saved_file_loads_and_predicts_the_same(name):
    est, X = fitted()[name]
    back = FILES[name].load(DATA / f"{name}.joblib")
    assert type(back) is FILES[name]
    np.testing.assert_allclose(back.decision_function(X), est.decision_function(X), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    # the files keep the Platt map they were fitted with (before `fit_platt`: sklearn's C=1 logistic fit on
    # hard labels): given it, the fresh fit's probabilities are the file's; and the two maps nearly agree
    saved, fresh = (e if isinstance(e, SVMHead) else e.svm_ for e in (back, est))
    assert (saved.proba_slope_, saved.proba_intercept_) == pytest.approx((fresh.proba_slope_, fresh.proba_intercept_),
                                                                         rel=0.1, abs=0.02)
    fresh.proba_slope_, fresh.proba_intercept_ = saved.proba_slope_, saved.proba_intercept_
    np.testing.assert_allclose(back.predict_proba(X), est.predict_proba(X), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(FILES))
def test_same_fit_writes_the_same_bytes(name, tmp_path):
    """Two fits on one machine write identical files. Not compared with the saved file's bytes: the
    last bits of a fit's floats depend on the CPU's kernels (they differed between an AMD EPYC and an
    Intel Xeon with the same numpy and scikit-learn), which the test above allows for."""
    first = fitted()[name][0].save(tmp_path / "a.joblib")
    second = fitted()[name][0].save(tmp_path / "b.joblib")
    assert first.read_bytes() == second.read_bytes()


def test_each_class_refuses_the_others_file():
    with pytest.raises(InputError, match="expected a saved SVMHead, got FeatureSVM"):
        SVMHead.load(DATA / "feature_svm.joblib")
    with pytest.raises(InputError, match="expected a saved FeatureSVM, got SVMHead"):
        FeatureSVM.load(DATA / "svm_head.joblib")


if __name__ == "__main__":  # regenerate the saved files
    DATA.mkdir(exist_ok=True)
    for name, (est, _) in fitted().items():
        print(est.save(DATA / f"{name}.joblib"))
    (DATA / "versions.json").write_text(json.dumps(versions(), indent=2) + "\n", encoding="utf-8")
    sys.exit(0)
