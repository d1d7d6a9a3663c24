"""A segmentation bundle on held-out scans, as `predict` runs it: each scan read from its own files,
segmented on its own voxels (`ichdet.engine.segment.segment_volume`), and compared with its
manifest mask (`mask_path`, read onto the scan's grid by `ichdet.io.masks.read_mask`).

One pass gives both the scan scores (the bundle's P(bleed), for AUC and the operating point) and a
`scan_record` per scan with a mask (volumes, Dice, ABC/2; `ichdet.evaluation.segmentation`).
Masks that know only "bleed" (manifest `mask_labels` = any, e.g. PhysioNet CT-ICH) are compared as
bleed vs no bleed: then only "any" and the total volume are scored, never the subtypes.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Sequence

import numpy as np

from ichdet.datasets import Progress
from ichdet.datasets.masks import LABELS_COLUMN, MASK_COLUMN, row_mask_path
from ichdet.datasets.prepared import PreparedCohort
from ichdet.engine.bundle import Bundle
from ichdet.errors import InputError
from ichdet.evaluation.segmentation import scan_record, segmentation_metrics

ANY_ONLY = "any"  # the manifest's mask_labels value of masks without subtypes


def _truth(row: Any, root: Any, volume: Any) -> tuple[np.ndarray, bool] | None:
    """(true label mask (Z, H, W) on the volume's grid, whether it has subtypes), or None when the
    row has no mask (a negative scan without one counts as an empty mask)."""
    from ichdet.io.masks import read_mask

    path = row_mask_path(row, root)
    if path is None:
        return (np.zeros(volume.shape, np.uint8), True) if row.label == 0 else None
    if not path.is_file():
        raise InputError(f"mask {row.extra[MASK_COLUMN]} of scan {row.path} not found")
    stored = read_mask(path, volume, mask_name=row.extra[MASK_COLUMN], scan_name=row.path)
    if (row.extra.get(LABELS_COLUMN) or "subtypes").strip() == ANY_ONLY:
        return (stored != 0).astype(np.uint8), False
    return stored.astype(np.uint8), True


def score_segmentation(bundle: Bundle, cohort: PreparedCohort, scan_ids: Sequence[str],
                       progress: Progress | None = None) -> tuple[np.ndarray, float, list[dict[str, Any]], bool]:
    """-> (scan scores float64 (N,), seconds per scan end to end, scan records of the scans with a
    mask, whether every record's truth has subtypes)."""
    from ichdet.engine.segment import segment_volume
    from ichdet.io import read_volume

    scores, records, seconds, subtyped = [], [], 0.0, True
    for i, sid in enumerate(scan_ids):
        row = cohort.row(sid)
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # the reader's warnings travel in volume.info["warnings"], as in predict
            warnings.simplefilter("ignore")
            volume = read_volume(row.resolved_path(cohort.root), series_uid=row.extra.get("series_uid") or None)
        seg = segment_volume(bundle, volume)
        seconds += time.perf_counter() - t0
        scores.append(seg.scan_probability)
        truth = _truth(row, cohort.root, volume)
        if truth is not None:
            true_mask, has_subtypes = truth
            pred = seg.mask if has_subtypes else (seg.mask != 0).astype(np.uint8)
            records.append(scan_record(sid, pred, true_mask, volume.spacing))
            subtyped &= has_subtypes
        if progress is not None:
            progress(i + 1, len(scan_ids))
    return np.asarray(scores, np.float64), seconds / max(len(scan_ids), 1), records, subtyped


def segmentation_summary(records: list[dict[str, Any]], subtyped: bool) -> dict[str, Any]:
    """metrics.json's "segmentation" from the scan records; with any mask that knows only "bleed",
    the per-subtype rows are left out and a note says why."""
    if not records:
        raise InputError("none of the evaluated scans has a mask (manifest column mask_path): nothing to score "
                         "the segmentation against")
    out = segmentation_metrics(records)
    if not subtyped:
        out["labels"] = {"any": out["labels"]["any"]}
        out["note"] = "some masks give no subtypes (mask_labels = any): only bleed vs no bleed is scored"
    return out
