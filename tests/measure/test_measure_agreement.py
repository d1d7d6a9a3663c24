"""Dice, Bland-Altman and the bootstrap median against hand-computed and numpy values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ichdet.errors import InputError
from ichdet.measure import bland_altman, dice, dice_per_label, error_summary, median_ci


def test_dice_any_bleed_and_per_label():
    truth = np.zeros((1, 2, 6), np.uint8)
    pred = np.zeros_like(truth)
    truth[0, 0, :4] = 2      # 4 intraparenchymal
    truth[0, 1, :2] = 4      # 2 subarachnoid
    pred[0, 0, 1:4] = 2      # 3 of the 4
    pred[0, 1, 1:2] = 2      # on a true subarachnoid voxel, labelled intraparenchymal
    assert dice(pred, truth) == pytest.approx(2 * 4 / (4 + 6))        # any bleed: 4 overlap
    assert dice(pred, truth, "any") == dice(pred, truth, None)
    assert dice(pred, truth, "intraparenchymal") == pytest.approx(2 * 3 / (4 + 4))
    assert dice(pred, truth, 2) == dice(pred, truth, "intraparenchymal")
    assert dice(pred, truth, "subarachnoid") == 0.0                    # truth 2, prediction none
    assert math.isnan(dice(pred, truth, "epidural"))                    # both empty
    assert dice(truth, truth) == 1.0


def test_dice_per_label_agrees_with_dice_label_by_label():
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 6, (3, 16, 16)).astype(np.uint8)
    pred = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 6, truth.shape)).astype(np.uint8)
    pred[pred == 1] = 0  # no epidural predicted
    truth[truth == 1] = 0  # nor true: both empty
    table = dice_per_label(pred, truth)
    assert list(table) == ["any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural"]
    assert math.isnan(table["epidural"])
    for label, value in table.items():
        if label != "epidural":
            assert value == pytest.approx(dice(pred, truth, label), abs=1e-15)
            assert 0.5 < value < 1.0
    with pytest.raises(InputError, match=r"^true mask: label mask holds value 6 at voxel \(z=0, y=0, x=0\);"):
        dice_per_label(pred, np.full_like(truth, 6))


def test_dice_refuses_mismatched_shapes_and_unknown_labels():
    with pytest.raises(InputError, match=r"^predicted mask shape \(2, 3\) differs from the true mask's \(3, 2\)$"):
        dice(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(InputError, match=r"^unknown label 'sdh'; use 'any' or one of epidural, intraparenchymal,"):
        dice(np.zeros(3), np.zeros(3), "sdh")
    with pytest.raises(InputError, match=r"^label must be 1\.\.5, got 6$"):
        dice(np.zeros(3), np.zeros(3), 6)


def test_bland_altman_by_hand():
    """d = [-0.5, 0.5, 1, -1]: bias 0, SD √(2.5/3); t(3, 0.975) = 3.182446."""
    ba = bland_altman([1.0, 2.0, 3.0, 4.0], [1.5, 1.5, 2.0, 5.0])
    sd = math.sqrt(2.5 / 3)
    assert ba["n"] == 4 and ba["level"] == 0.95
    assert ba["bias"] == pytest.approx(0.0, abs=1e-12)
    assert ba["sd"] == pytest.approx(sd)
    assert ba["loa"] == pytest.approx([-1.959964 * sd, 1.959964 * sd], rel=1e-6)
    assert ba["bias_ci"] == pytest.approx([-3.182446 * sd / 2, 3.182446 * sd / 2], rel=1e-6)
    half = 3.182446 * math.sqrt(3 * sd * sd / 4)
    assert ba["loa_ci"][1] == pytest.approx([1.959964 * sd - half, 1.959964 * sd + half], rel=1e-6)


def test_bland_altman_small_and_bad_inputs():
    one = bland_altman([3.0], [1.0])
    assert one["n"] == 1 and one["bias"] == 2.0 and math.isnan(one["sd"]) and math.isnan(one["bias_ci"][0])
    none = bland_altman([], [])
    assert none["n"] == 0 and math.isnan(none["bias"])
    with pytest.raises(InputError, match=r"^measured and reference values differ in length: 2 vs 3$"):
        bland_altman([1, 2], [1, 2, 3])
    with pytest.raises(InputError, match=r"^reference values contain NaN or infinity$"):
        bland_altman([1, 2], [1, float("nan")])
    with pytest.raises(InputError, match=r"^confidence level must lie strictly between 0 and 1, got 95$"):
        bland_altman([1, 2], [1, 2], level=95)


def test_median_ci_matches_a_numpy_bootstrap():
    v = np.array([0.91, 0.42, 0.88, 0.95, 0.73, 0.80, 0.99, 0.67, 0.85])
    out = median_ci(v, n_boot=2000, seed=7)
    assert (out["n"], out["median"], out["q1"], out["q3"]) == (9, 0.85, 0.73, 0.91)
    assert out["iqr"] == pytest.approx(0.18)
    idx = np.random.default_rng(7).integers(0, v.size, (2000, v.size))
    expected = np.quantile(np.median(v[idx], axis=1), [0.025, 0.975])
    assert out["median_ci"] == pytest.approx(expected.tolist())
    assert out["median_ci"][0] < 0.85 < out["median_ci"][1]
    assert median_ci(v, n_boot=2000, seed=7) == out


def test_median_ci_edge_cases():
    assert median_ci([2.0, 2.0, 2.0])["median_ci"] == [2.0, 2.0]
    one = median_ci([0.5])
    assert one["median"] == 0.5 and one["iqr"] == 0.0 and all(math.isnan(x) for x in one["median_ci"])
    assert median_ci([])["n"] == 0 and math.isnan(median_ci([])["median"])
    with pytest.raises(InputError, match=r"^values contain NaN or infinity$"):
        median_ci([0.5, float("nan")])
    with pytest.raises(InputError, match=r"^n_boot must be at least 2, got 1$"):
        median_ci([0.5, 0.6], n_boot=1)


def test_error_summary():
    e = error_summary([10.0, 4.0, 7.5], [9.0, 6.0, 7.0])  # errors +1, -2, +0.5
    assert e["n"] == 3
    assert e["mean"] == pytest.approx(-0.5 / 3)
    assert e["mean_abs"] == pytest.approx(3.5 / 3)
    assert e["median_abs"] == 1.0
    assert e["bland_altman"]["bias"] == e["mean"]
