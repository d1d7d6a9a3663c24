"""Segmentation on held-out scans: Dice per label, volume error in mL against the truth, and the
model's total volume against the bedside ABC/2 estimate (metrics.json's "segmentation").

Scans stream: `scan_record` reduces one scan's predicted and true label masks to a small dict
(volumes per subtype, Dice per label, ABC/2 of each mask), and `segmentation_metrics` summarises
the records, so no more than one scan's masks are held at a time.

What is summarised, per label ("any" and each subtype present in some scan's truth):
- Dice over the scans whose truth holds that label (as segmentation studies report it: a scan
  without the label has no overlap to score; what the model finds there is the false-positive
  volume below); median, IQR and a bootstrap 95 % CI of the median; the median again over the
  scans whose true volume of that label is at least `LARGE_BLEED_ML`.
- Volume error (model - truth, mL) over the scans whose truth holds that label: mean (the bias),
  mean and median absolute, Bland-Altman limits; and the volume the model finds on scans whose
  truth has none of that label (false-positive volume).
For the total bleed, ABC/2 is scored the same way over the same scans: ABC/2 as a reader would take
it from the true outline (`abc2_truth`, what "closer to the truth than ABC/2" compares with), and
ABC/2 of the predicted mask (`abc2_model`, what `predict` reports beside the volume).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ichdet.datasets.manifest import SUBTYPES
from ichdet.errors import InputError
from ichdet.measure import (
    abc2, check_label_mask, check_spacing, dice_per_label, error_summary, label_volumes_ml, median_ci,
)

LABELS = ("any", *SUBTYPES)  # "any" = every bleed label together; its volume is the "total"
LARGE_BLEED_ML = 5.0  # mL: the goal is stated for bleeds at least this large
RECORD_KEYS = ("scan_id", "pred_ml", "true_ml", "dice", "abc2_truth_ml")


def _volume_key(label: str) -> str:
    return "total" if label == "any" else label


def scan_record(scan_id: str, pred_mask: Any, true_mask: Any, spacing: Any) -> dict[str, Any]:
    """One scan's row: {"scan_id", "spacing": [dz, dy, dx], "pred_ml" / "true_ml": {subtype: mL, "total": mL},
    "dice": {label: Dice or None (both empty)} for "any" and each subtype, "abc2_pred" / "abc2_truth":
    `ABC2.as_dict()` of the predicted / true mask, "abc2_pred_ml" / "abc2_truth_ml": their volumes}.
    Masks: label masks (Z, H, W) of the same shape, spacing (dz, dy, dx) mm."""
    where = f"scan {scan_id}"
    pred = check_label_mask(pred_mask, f"{where} predicted mask")
    truth = check_label_mask(true_mask, f"{where} true mask")
    if pred.shape != truth.shape:
        raise InputError(f"{where}: predicted mask shape {pred.shape} differs from the true mask's {truth.shape}")
    s = check_spacing(spacing, where)
    d = dice_per_label(pred, truth)
    a_pred, a_true = abc2(pred, s), abc2(truth, s)
    return {"scan_id": str(scan_id), "spacing": list(s), "pred_ml": label_volumes_ml(pred, s),
            "true_ml": label_volumes_ml(truth, s), "dice": {k: None if math.isnan(v) else v for k, v in d.items()},
            "abc2_pred": a_pred.as_dict(), "abc2_truth": a_true.as_dict(),
            "abc2_pred_ml": a_pred.volume_ml, "abc2_truth_ml": a_true.volume_ml}


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def _json(x: Any) -> Any:
    """`x` with every NaN or infinity replaced by None and NumPy scalars by Python numbers."""
    if isinstance(x, Mapping):
        return {k: _json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _check_records(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    rows = list(records)
    for i, r in enumerate(rows):
        missing = [k for k in RECORD_KEYS if k not in r]
        if missing:
            raise InputError(f"segmentation record {i} ({r.get('scan_id', 'no scan_id')}) lacks {', '.join(missing)}")
    return rows


def label_summary(rows: list[Mapping[str, Any]], label: str, level: float = 0.95, n_boot: int = 2000,
                  seed: int = 0) -> dict[str, Any]:
    """One label's Dice and volume figures over `rows` (scan records); see the module docstring."""
    key = _volume_key(label)
    true_ml = np.array([_num(r["true_ml"][key]) for r in rows])
    pred_ml = np.array([_num(r["pred_ml"][key]) for r in rows])
    dices = np.array([_num(r["dice"].get(label)) for r in rows])
    bleed = true_ml > 0
    scored = bleed & ~np.isnan(dices)
    large = scored & (true_ml >= LARGE_BLEED_ML)
    fp = pred_ml[~bleed]
    return {"scans_with_bleed": int(bleed.sum()),
            "dice": median_ci(dices[scored], level, n_boot, seed),
            "dice_large": {"min_true_ml": LARGE_BLEED_ML, "n": int(large.sum()),
                           "median": float(np.median(dices[large])) if large.any() else math.nan},
            "volume_error_ml": error_summary(pred_ml[bleed], true_ml[bleed], level),
            "false_positive_ml": {"n": int(fp.size), "scans_with_volume": int((fp > 0).sum()),
                                  "median": float(np.median(fp)) if fp.size else math.nan,
                                  "max": float(fp.max()) if fp.size else math.nan}}


def segmentation_metrics(records: Iterable[Mapping[str, Any]], level: float = 0.95, n_boot: int = 2000,
                         seed: int = 0) -> dict[str, Any]:
    """metrics.json's "segmentation" (JSON-ready: undefined figures are None) from scan records
    (`scan_record`'s dicts; only scan_id, pred_ml, true_ml, dice and abc2_truth_ml are read, abc2_pred_ml
    when present):
    {"n_scans", "level", "labels": {label: `label_summary`} for "any" and each subtype in some truth,
     "total": {"n", "model" / "abc2_truth" / "abc2_model": `error_summary` (mL) against the true total over
     the scans with a bleed, "median_abs_error_ml": {"model", "abc2"}, "closer_to_truth": "model" | "abc2" |
     "tie" | None}, "scans": [{"scan_id", "true_ml", "model_ml", "abc2_ml", "abc2_model_ml"}] (totals, every
     scan; for the Bland-Altman plot)}."""
    rows = _check_records(records)
    present = [s for s in SUBTYPES if any(_num(r["true_ml"][s]) > 0 for r in rows)]
    labels = {label: label_summary(rows, label, level, n_boot, seed) for label in LABELS
              if label == "any" or label in present}
    true = np.array([_num(r["true_ml"]["total"]) for r in rows])
    model = np.array([_num(r["pred_ml"]["total"]) for r in rows])
    reader = np.array([_num(r["abc2_truth_ml"]) for r in rows])
    on_pred = np.array([_num(r.get("abc2_pred_ml")) for r in rows])
    bleed = true > 0
    total: dict[str, Any] = {"n": int(bleed.sum()), "model": error_summary(model[bleed], true[bleed], level),
                             "abc2_truth": error_summary(reader[bleed], true[bleed], level)}
    if not np.isnan(on_pred).any():
        total["abc2_model"] = error_summary(on_pred[bleed], true[bleed], level)
    m_err, a_err = total["model"]["median_abs"], total["abc2_truth"]["median_abs"]
    total["median_abs_error_ml"] = {"model": m_err, "abc2": a_err}
    total["closer_to_truth"] = (None if math.isnan(m_err) else "tie" if m_err == a_err
                                else "model" if m_err < a_err else "abc2")
    scans = [{"scan_id": str(r["scan_id"]), "true_ml": t, "model_ml": m, "abc2_ml": a, "abc2_model_ml": p}
             for r, t, m, a, p in zip(rows, true, model, reader, on_pred)]
    return _json({"n_scans": len(rows), "level": float(level), "labels": labels, "total": total, "scans": scans})
