"""Scan-level baselines on the slice CNN (paper section 4.1), no LSTM.

- `slice_max`, `slice_p95`: one scan score from its per-slice positive probabilities.
- `FeatureSVM`: the per-slice features (Z, F) of a scan, zero-padded at both ends to a common
  length, flattened, classified by a linear `SVMHead`.

They are not torch modules, so they are listed in `BASELINES` rather than in the model registry.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ichdet.errors import InputError
from ichdet.models.svm_head import C_GRID, SaveLoadMixin, SVMHead


def _probabilities(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or not np.isfinite(p).all():
        raise InputError(f"expected a non-empty finite vector of slice probabilities (Z,), got shape {p.shape}")
    return p


def slice_max(p) -> float:
    """Per-slice probabilities (Z,) -> their maximum."""
    return float(_probabilities(p).max())


def slice_percentile(p, q: float = 95.0) -> float:
    """Per-slice probabilities (Z,) -> their q-th percentile (numpy's default linear interpolation)."""
    if not 0.0 <= q <= 100.0:
        raise InputError(f"percentile must be in [0, 100], got {q!r}")
    return float(np.percentile(_probabilities(p), q))


def slice_p95(p) -> float:
    """Per-slice probabilities (Z,) -> 95th percentile, linear interpolation between the closest ranks
    (`np.percentile(p, 95)`): with Z slices the rank is 0.95 * (Z - 1) in sorted order."""
    return slice_percentile(p, 95.0)


def pad_features(f, length: int) -> np.ndarray:
    """Slice features (Z, F) -> (length, F).

    Z < length: zero rows at both ends, (length - Z) // 2 before and the rest after (the extra
    one at the end when the difference is odd). Z > length: the centre `length` rows are kept,
    (Z - length) // 2 dropped at the start and the rest at the end.
    """
    f = np.asarray(f)
    if f.ndim != 2 or f.shape[0] == 0:
        raise InputError(f"pad_features expects slice features (Z, F) with Z >= 1, got shape {f.shape}")
    if not isinstance(length, (int, np.integer)) or length < 1:
        raise InputError(f"pad_features length must be a positive integer, got {length!r}")
    z = f.shape[0]
    if z >= length:
        start = (z - length) // 2
        return f[start:start + length].copy()
    before = (length - z) // 2
    out = np.zeros((length, f.shape[1]), dtype=f.dtype)
    out[before:before + z] = f
    return out


class FeatureSVM(SaveLoadMixin, ClassifierMixin, BaseEstimator):
    """Scans' slice features padded or cropped to one length (`pad_features`), flattened, then a
    linear `SVMHead` (`svm_`): fit(list of (Z_i, F) arrays, y (N,)).

    `length=None` pads to the longest training scan (`length_`); longer scans at prediction time
    are centre-cropped. The remaining parameters are the `SVMHead`'s.
    """

    fitted_attr = "svm_"

    def __init__(self, length: int | None = None, C: float | None = None, Cs: Sequence[float] = C_GRID,
                 inner_folds: int = 3, class_weight: str | dict | None = "balanced", random_state: int | None = 0):
        self.length = length
        self.C = C
        self.Cs = Cs
        self.inner_folds = inner_folds
        self.class_weight = class_weight
        self.random_state = random_state

    def _stack(self, features: Sequence, length: int) -> np.ndarray:
        if isinstance(features, np.ndarray) and features.ndim == 3:
            features = list(features)
        if len(features) == 0:
            raise InputError("FeatureSVM needs at least one scan, got an empty list")
        mats = [np.asarray(f, dtype=np.float64) for f in features]
        widths = {m.shape[-1] if m.ndim == 2 else None for m in mats}
        expected = getattr(self, "n_slice_features_", None)
        if len(widths) != 1 or None in widths or (expected is not None and widths != {expected}):
            shapes = sorted({m.shape for m in mats})[:5]
            raise InputError(f"FeatureSVM expects (Z, F) arrays with one F"
                             f"{'' if expected is None else f' = {expected}'}, got shapes {shapes}")
        return np.stack([pad_features(m, length).ravel() for m in mats])

    def fit(self, features: Sequence, y) -> "FeatureSVM":
        """features: N arrays (Z_i, F); y (N,). Returns self."""
        if self.length is not None and (not isinstance(self.length, (int, np.integer)) or self.length < 1):
            raise InputError(f"FeatureSVM length must be a positive integer or None, got {self.length!r}")
        if hasattr(self, "n_slice_features_"):
            del self.n_slice_features_
        lengths = [np.shape(f)[0] if np.ndim(f) == 2 else 0 for f in features]
        self.length_ = int(self.length) if self.length is not None else max(lengths, default=1)
        X = self._stack(features, self.length_)
        self.svm_ = SVMHead(kernel="linear", C=self.C, Cs=self.Cs, inner_folds=self.inner_folds,
                            class_weight=self.class_weight, random_state=self.random_state).fit(X, y)
        self.n_slice_features_ = X.shape[1] // self.length_
        self.classes_ = self.svm_.classes_
        self.C_ = self.svm_.C_
        return self

    def _transform(self, features: Sequence) -> np.ndarray:
        check_is_fitted(self, "svm_")
        return self._stack(features, self.length_)

    def decision_function(self, features: Sequence) -> np.ndarray:
        """N arrays (Z_i, F) -> (N,) scores for `classes_[1]` ((N, K) for more classes)."""
        return self.svm_.decision_function(self._transform(features))

    def predict(self, features: Sequence) -> np.ndarray:
        """N arrays (Z_i, F) -> labels (N,)."""
        return self.svm_.predict(self._transform(features))

    def predict_proba(self, features: Sequence) -> np.ndarray:
        """N arrays (Z_i, F) -> probabilities (N, K), columns in `classes_` order."""
        return self.svm_.predict_proba(self._transform(features))


BASELINES = {"slice_max": slice_max, "slice_p95": slice_p95, "feature_svm": FeatureSVM}
