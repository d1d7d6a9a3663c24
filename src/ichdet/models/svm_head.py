"""An SVM classifier on network features (scikit-learn estimator), as in "AlexNet-SVM".

`SVMHead` = Pipeline(StandardScaler, SVC). With `C=None` the penalty is chosen from `Cs` by an inner
stratified cross-validation on the training data only (ROC AUC for two classes, balanced accuracy
otherwise); ties go to the smallest C. Binary probabilities are Platt-calibrated
(`ichdet.models.platt`) on the inner-CV decision values, constrained to increase, so `predict_proba`
ranks exactly like `decision_function` (same AUC). Multiclass uses one-vs-rest decision values; its
probabilities are their softmax (not calibrated).
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Sequence

import joblib
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.validation import check_is_fitted

from ichdet.errors import InputError, InputWarning
from ichdet.fileio import atomic_path
from ichdet.models.platt import fit_platt

KERNELS = ("linear", "rbf")
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)  # the penalties inner CV chooses from by default


def as_feature_matrix(X, who: str, n_features: int | None = None) -> np.ndarray:
    """X -> float64 array (N, F), finite; InputError naming the shape otherwise."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise InputError(f"{who} expects features (N, F) with N, F >= 1, got shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise InputError(f"{who} was fitted on {n_features} features, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise InputError(f"{who} features contain NaN or infinity (shape {X.shape})")
    return X


class SaveLoadMixin:
    """`save` a fitted estimator with joblib (atomically) and `load` it back, checking its class.
    `fitted_attr` names the attribute `fit` sets."""

    fitted_attr = "pipeline_"

    def save(self, path: str | Path) -> Path:
        """Write the fitted estimator with joblib (atomically). Load only files you trust: it is a pickle."""
        check_is_fitted(self, self.fitted_attr)
        with atomic_path(path) as tmp:
            joblib.dump(self, tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path):
        """Read an estimator of this class written by `save`."""
        return load_estimator(path, cls)


class SVMHead(SaveLoadMixin, ClassifierMixin, BaseEstimator):
    """Scaled SVM classifier; X (N, F) features, y (N,) labels. Learned: pipeline_, C_, classes_."""

    def __init__(self, kernel: str = "linear", C: float | None = None, Cs: Sequence[float] = C_GRID,
                 inner_folds: int = 3, class_weight: str | dict | None = "balanced", random_state: int | None = 0):
        self.kernel = kernel
        self.C = C
        self.Cs = Cs
        self.inner_folds = inner_folds
        self.class_weight = class_weight
        self.random_state = random_state

    def _pipeline(self, C: float) -> Pipeline:
        svc = SVC(kernel=self.kernel, C=C, class_weight=self.class_weight, decision_function_shape="ovr",
                  random_state=self.random_state)
        return Pipeline([("scale", StandardScaler()), ("svc", svc)])

    def _check_params(self) -> None:
        if self.kernel not in KERNELS:
            raise InputError(f"SVMHead kernel must be one of {KERNELS}, got {self.kernel!r}")
        if self.C is not None and not (isinstance(self.C, (int, float)) and self.C > 0):
            raise InputError(f"SVMHead C must be a positive number or None, got {self.C!r}")
        if self.C is None and (len(self.Cs) == 0 or any(not c > 0 for c in self.Cs)):
            raise InputError(f"SVMHead Cs must be non-empty positive numbers, got {self.Cs!r}")
        if not isinstance(self.inner_folds, int) or self.inner_folds < 2:
            raise InputError(f"SVMHead inner_folds must be an integer >= 2, got {self.inner_folds!r}")

    def fit(self, X, y) -> "SVMHead":
        """Fit on X (N, F), y (N,); chooses C by inner CV when `C is None`. Returns self."""
        self._check_params()
        X = as_feature_matrix(X, "SVMHead")
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(X):
            raise InputError(f"SVMHead needs one label per feature row: X shape {X.shape}, got y shape {y.shape}")
        self.classes_, counts = np.unique(y, return_counts=True)
        if len(self.classes_) < 2:
            raise InputError(f"SVMHead needs at least two classes in y, got only class {self.classes_.tolist()[0]!r} "
                             f"in {len(y)} samples")
        self.n_features_in_ = X.shape[1]
        n_splits = int(min(self.inner_folds, counts.min()))
        cv = StratifiedKFold(n_splits, shuffle=True, random_state=self.random_state) if n_splits >= 2 else None
        binary = len(self.classes_) == 2
        if self.C is not None:
            self.C_ = float(self.C)
        elif cv is None:
            self.C_ = float(1.0 if 1.0 in self.Cs else sorted(self.Cs)[len(self.Cs) // 2])
            warnings.warn(f"SVMHead: a class has only {counts.min()} sample(s), too few for inner CV; "
                          f"using C={self.C_}", InputWarning, stacklevel=2)
        else:
            search = GridSearchCV(self._pipeline(1.0), {"svc__C": sorted(float(c) for c in self.Cs)}, cv=cv,
                                  scoring="roc_auc" if binary else "balanced_accuracy", refit=False)
            search.fit(X, y)
            self.C_ = float(search.best_params_["svc__C"])
            self.cv_results_ = search.cv_results_
        self.pipeline_ = self._pipeline(self.C_).fit(X, y)
        self.proba_slope_, self.proba_intercept_ = 1.0, 0.0
        if binary and cv is not None:
            self._calibrate(X, y, cv)
        return self

    def _calibrate(self, X: np.ndarray, y: np.ndarray, cv: StratifiedKFold) -> None:
        """Platt scaling (`fit_platt`) on out-of-fold decision values; keeps the identity map if the fit is not increasing."""
        d = cross_val_predict(self._pipeline(self.C_), X, y, cv=cv, method="decision_function")
        fit = fit_platt((y == self.classes_[1]).astype(int), d)
        if fit is not None and fit[0] > 0:
            self.proba_slope_, self.proba_intercept_ = fit

    def decision_function(self, X) -> np.ndarray:
        """X (N, F) -> (N,) scores for `classes_[1]` (two classes) or (N, K) one-vs-rest scores."""
        check_is_fitted(self, "pipeline_")
        return self.pipeline_.decision_function(as_feature_matrix(X, "SVMHead", self.n_features_in_))

    def predict(self, X) -> np.ndarray:
        """X (N, F) -> predicted labels (N,) from `classes_`."""
        check_is_fitted(self, "pipeline_")
        return self.pipeline_.predict(as_feature_matrix(X, "SVMHead", self.n_features_in_))

    def linear_logit(self) -> tuple[np.ndarray, float]:
        """A fitted two-class linear SVM as one affine map of the raw features: (w (F,), b) with
        sigmoid(X @ w + b) == predict_proba(X)[:, 1] (scaling, SVM and Platt fit folded together),
        so a network's dense layer can carry the SVM (and Grad-CAM can explain it)."""
        check_is_fitted(self, "pipeline_")
        if self.kernel != "linear" or len(self.classes_) != 2:
            raise InputError(f"only a two-class linear SVM is one affine map; this one has kernel {self.kernel!r} "
                             f"and {len(self.classes_)} classes")
        scale, svc = self.pipeline_.named_steps["scale"], self.pipeline_.named_steps["svc"]
        coef = np.asarray(svc.coef_, dtype=np.float64).reshape(-1) / scale.scale_
        w = self.proba_slope_ * coef
        b = self.proba_slope_ * (float(svc.intercept_[0]) - float(coef @ scale.mean_)) + self.proba_intercept_
        return w, float(b)

    def predict_proba(self, X) -> np.ndarray:
        """X (N, F) -> (N, K) probabilities, columns in `classes_` order."""
        d = self.decision_function(X)
        if d.ndim == 1:
            p = 1.0 / (1.0 + np.exp(-(self.proba_slope_ * d + self.proba_intercept_)))
            return np.stack([1.0 - p, p], axis=1)
        e = np.exp(d - d.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def load_estimator(path: str | Path, cls: type):
    """joblib-load `path` and check it holds a `cls`; InputError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{cls.__name__} file not found", path)
    try:
        obj = joblib.load(path)
    except (OSError, EOFError, ValueError, KeyError, ImportError, AttributeError, pickle.UnpicklingError) as e:
        raise InputError(f"not a readable {cls.__name__} file ({e})", path) from e
    if not isinstance(obj, cls):
        raise InputError(f"expected a saved {cls.__name__}, got {type(obj).__name__}", path)
    return obj
