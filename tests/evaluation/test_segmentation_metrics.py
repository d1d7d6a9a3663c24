"""Segmentation summaries (Dice, volume error, ABC/2) from scan records made by hand."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ichdet.errors import InputError
from ichdet.evaluation.segmentation import scan_record, segmentation_metrics
from ichdet.measure import median_ci


def test_scan_record_of_two_masks():
    truth = np.zeros((5, 20, 20), np.uint8)
    truth[1:4, 5:15, 5:15] = 2           # 300 voxels intraparenchymal
    truth[0, 0, :4] = 5                  # 4 voxels subdural, a second, smaller lesion
    pred = np.zeros_like(truth)
    pred[1:4, 5:15, 5:13] = 2            # 240 of them
    pred[4, 19, 19] = 3                  # a false intraventricular voxel
    r = scan_record("s1", pred, truth, (2.0, 0.5, 0.5))   # 0.5 mm^3 per voxel
    assert r["scan_id"] == "s1" and r["spacing"] == [2.0, 0.5, 0.5]
    assert r["true_ml"]["intraparenchymal"] == pytest.approx(0.15) and r["true_ml"]["total"] == pytest.approx(0.152)
    assert r["pred_ml"]["intraparenchymal"] == pytest.approx(0.12) and r["pred_ml"]["intraventricular"] == 0.0005
    assert r["dice"]["any"] == pytest.approx(2 * 240 / (241 + 304))
    assert r["dice"]["intraparenchymal"] == pytest.approx(2 * 240 / 540)
    assert r["dice"]["subdural"] == 0.0 and r["dice"]["intraventricular"] == 0.0
    assert r["dice"]["epidural"] is None and r["dice"]["subarachnoid"] is None
    # ABC/2 of the larger true lesion, 10 x 10 px of 0.5 mm on 3 slices of 2 mm. Its outline through the pixels'
    # edge midpoints (px) is the octagon (0, 0.5), (0, 9.5), (0.5, 10), ... : A = (0, 0.5) to (10, 9.5) = √181 px,
    # across it the octagon spans 181 / √181 px, so A·B = 181 px² = 45.25 mm² and ABC/2 = 45.25 · 6 / 2 mm³.
    assert r["abc2_truth"]["lesion_voxels"] == 300 and r["abc2_truth"]["c_mm"] == 6.0
    assert r["abc2_truth"]["a_mm"] == pytest.approx(0.5 * 181 ** 0.5) and r["abc2_truth"]["slice_index"] == 1
    assert r["abc2_truth_ml"] == pytest.approx(45.25 * 6 / 2 / 1000)
    # predicted, 10 x 8 px: A = (0, 0.5) to (10, 7.5) = √149 px, across it 143 / √149 px: A·B = 143 px²
    assert r["abc2_pred"]["lesion_voxels"] == 240 and r["abc2_pred_ml"] == pytest.approx(143 * 0.25 * 6 / 2 / 1000)
    json.dumps(r, allow_nan=False)


def test_scan_record_refuses_masks_of_different_shapes():
    with pytest.raises(InputError, match=r"^scan s2: predicted mask shape \(2, 4, 4\) differs from the true "
                                         r"mask's \(2, 4, 5\)$"):
        scan_record("s2", np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 5), np.uint8), (1, 1, 1))
    with pytest.raises(InputError, match=r"^scan s3 true mask: label mask holds value 9 at voxel"):
        scan_record("s3", np.zeros((1, 1, 1), np.uint8), np.full((1, 1, 1), 9, np.uint8), (1, 1, 1))


def _row(sid, true_ml, pred_ml, dice_any, abc2_ml, sub="intraparenchymal", dice_sub=None):
    """A record with one subtype: the whole bleed is `sub`."""
    vols = lambda v: {"epidural": 0.0, "intraparenchymal": 0.0, "intraventricular": 0.0, "subarachnoid": 0.0,
                      "subdural": 0.0, sub: v, "total": v}
    dices = {"any": dice_any, "epidural": None, "intraparenchymal": None, "intraventricular": None,
             "subarachnoid": None, "subdural": None, sub: dice_any if dice_sub is None else dice_sub}
    return {"scan_id": sid, "true_ml": vols(true_ml), "pred_ml": vols(pred_ml), "dice": dices,
            "abc2_truth_ml": abc2_ml, "abc2_pred_ml": abc2_ml * 0.9}


RECORDS = [
    _row("a", 10.0, 11.0, 0.90, 7.0),
    _row("b", 2.0, 1.5, 0.70, 2.5),
    _row("c", 30.0, 29.0, 0.95, 24.0, sub="subdural"),
    _row("d", 6.0, 6.5, 0.88, 4.0),
    _row("e", 0.0, 0.0, None, 0.0),          # no bleed, none found: no Dice
    _row("f", 0.0, 0.3, 0.0, 0.0),           # no bleed, 0.3 mL found: Dice 0
]


def test_segmentation_metrics_on_hand_made_records():
    m = segmentation_metrics(RECORDS, n_boot=500, seed=3)
    json.dumps(m, allow_nan=False)
    assert m["n_scans"] == 6 and list(m["labels"]) == ["any", "intraparenchymal", "subdural"]
    anyb = m["labels"]["any"]
    assert anyb["scans_with_bleed"] == 4
    dices = [0.90, 0.70, 0.95, 0.88]  # the scans with a bleed; f's false positive (Dice 0) is its FP volume
    assert anyb["dice"] == median_ci(dices, n_boot=500, seed=3)
    assert anyb["dice"]["n"] == 4 and anyb["dice"]["median"] == pytest.approx(0.89)
    assert (anyb["dice"]["q1"], anyb["dice"]["q3"]) == (pytest.approx(0.835), pytest.approx(0.9125))
    assert anyb["dice_large"] == {"min_true_ml": 5.0, "n": 3, "median": 0.90}   # a, c, d
    e = anyb["volume_error_ml"]                                                   # +1, -0.5, -1, +0.5
    assert (e["n"], e["mean"], e["mean_abs"], e["median_abs"]) == (4, 0.0, 0.75, 0.75)
    assert e["bland_altman"]["sd"] == pytest.approx(math.sqrt(2.5 / 3))
    assert anyb["false_positive_ml"] == {"n": 2, "scans_with_volume": 1, "median": 0.15, "max": 0.3}
    ipb = m["labels"]["intraparenchymal"]
    assert ipb["scans_with_bleed"] == 3 and ipb["dice"]["n"] == 3 and ipb["dice_large"]["n"] == 2
    assert m["labels"]["subdural"]["volume_error_ml"]["mean"] == -1.0
    assert m["labels"]["subdural"]["dice"]["n"] == 1 and m["labels"]["subdural"]["dice"]["median_ci"] == [None, None]
    t = m["total"]
    assert t["n"] == 4
    assert t["abc2_truth"]["median_abs"] == 2.5                                  # |-3|, |+0.5|, |-6|, |-2|
    assert t["abc2_truth"]["mean"] == pytest.approx(-10.5 / 4)
    assert t["abc2_model"]["n"] == 4
    assert t["median_abs_error_ml"] == {"model": 0.75, "abc2": 2.5} and t["closer_to_truth"] == "model"
    assert m["scans"][0] == {"scan_id": "a", "true_ml": 10.0, "model_ml": 11.0, "abc2_ml": 7.0,
                             "abc2_model_ml": pytest.approx(6.3)}
    assert len(m["scans"]) == 6


def test_segmentation_metrics_without_bleeds_and_bad_records():
    m = segmentation_metrics([RECORDS[4]], n_boot=100)
    assert list(m["labels"]) == ["any"]
    assert m["total"]["closer_to_truth"] is None and m["total"]["model"]["mean"] is None
    assert m["labels"]["any"]["dice"]["n"] == 0
    with pytest.raises(InputError, match=r"^segmentation record 1 \(b\) lacks dice, abc2_truth_ml$"):
        segmentation_metrics([RECORDS[0], {k: v for k, v in RECORDS[1].items() if k not in ("dice", "abc2_truth_ml")}])
