"""fit_platt: Platt's sigmoid fit of scores to labels, shared by network calibration and SVMHead."""
from __future__ import annotations

import numpy as np
import pytest

from ichdet.errors import InputError
from ichdet.models.platt import fit_platt


def test_recovers_a_known_slope_and_offset_of_raw_scores():
    rng = np.random.default_rng(0)
    d = rng.normal(0, 3.0, 20000)  # decision values, not logits of probabilities
    y = (rng.uniform(size=d.size) < 1 / (1 + np.exp(-(0.7 * d + 1.2)))).astype(int)
    a, c = fit_platt(y, d)
    assert a == pytest.approx(0.7, abs=0.05) and c == pytest.approx(1.2, abs=0.1)


def test_separated_scores_get_platt_targets_not_zero_and_one():
    d = np.linspace(-1, 1, 40)
    y = (d > 0).astype(int)  # 20 and 20: targets 21/22 and 1/22
    a, c = fit_platt(y, d)
    q = 1 / (1 + np.exp(-(a * d + c)))
    assert 0 < a < 10 and c == pytest.approx(0.0, abs=1e-3)  # hard 0/1 labels would send a to infinity
    assert 1e-3 < q.min() < 0.1 and 0.9 < q.max() < 1 - 1e-3
    # the weighted log loss of the soft targets is at its minimum: both derivatives vanish
    t = np.where(y == 1, 21 / 22, 1 / 22)
    assert abs(np.sum(q - t)) < 1e-2 and abs(np.sum((q - t) * d)) < 1e-2  # over 40 samples: lbfgs tolerance


def test_one_class_gives_none_and_mismatched_shapes_one_line():
    assert fit_platt(np.zeros(6, dtype=int), np.arange(6.0)) is None
    with pytest.raises(InputError, match=r"^fit_platt needs labels and scores of one shape \(N,\), got \(3,\) and \(3, 1\)$"):
        fit_platt(np.array([0, 1, 0]), np.zeros((3, 1)))
