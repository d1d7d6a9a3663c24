"""Prepared label masks of a cohort: the manifest's `mask_path`, on the prepared grid, cached.

A manifest row names its mask in the `mask_path` column (relative to the manifest's folder, as
`path`), and may say `mask_labels: any` for a mask that gives bleed but no subtype (CT-ICH; a
value above 5 says so too): see `ichdet.io.masks`. `prepared_mask` reads the mask onto its scan's
voxel grid (refusing one whose shape differs, naming both files), maps it to training labels
(`mask_targets`: 0..5, or `UNKNOWN_SUBTYPE` = 6) and takes it through the image's spatial steps
(`ichdet.preprocess.masks.prepare_mask`). With a `PreparedCache` the result is stored under a key
of the scan's and the mask's file fingerprints and the spec, like the prepared images.

A negative scan (label 0) without a mask has no bleed anywhere: its mask is all 0. A positive
scan without a mask has none to learn from (`prepared_mask` gives None).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ichdet.datasets.cache import PreparedCache, fingerprint_files, volume_key_parts
from ichdet.datasets.manifest import ManifestRow
from ichdet.datasets.prepared import PreparedCohort, source_files
from ichdet.errors import InputError
from ichdet.io import read_volume
from ichdet.io.masks import mask_targets, read_mask
from ichdet.preprocess.masks import check_seg_spec, crop_box, prepare_mask
from ichdet.preprocess.pipeline import PrepSpec

MASK_COLUMN = "mask_path"
LABELS_COLUMN = "mask_labels"


def row_mask_path(row: ManifestRow, root: str | Path) -> Path | None:
    """The row's mask file (`mask_path`, relative to `root`), or None when it has none."""
    text = (row.extra.get(MASK_COLUMN) or "").strip()
    if not text:
        return None
    p = Path(text)
    return p if p.is_absolute() else Path(root) / p


def _compute(row: ManifestRow, root: Path, mask_path: Path, spec: PrepSpec) -> np.ndarray:
    vol = read_volume(row.resolved_path(root), series_uid=row.extra.get("series_uid") or None)
    stored = read_mask(mask_path, vol, mask_name=row.extra[MASK_COLUMN], scan_name=row.path)
    labels = mask_targets(stored, (row.extra.get(LABELS_COLUMN) or "subtypes").strip())
    return prepare_mask(labels, spec, crop_box(vol.hu, vol.spacing, spec))


def prepared_mask(row: ManifestRow, root: str | Path, spec: PrepSpec, cache: PreparedCache | None = None,
                  n_slices: int | None = None) -> np.ndarray | None:
    """uint8 (Z, size, size) training labels of one manifest row on the prepared grid (0 none,
    1..5 subtypes, 6 bleed of unknown subtype); all 0 (needs `n_slices`) for a negative scan
    without a mask; None for a positive scan without one."""
    check_seg_spec(spec)
    root = Path(root)
    mask_path = row_mask_path(row, root)
    if mask_path is None:
        if row.label == 0 and n_slices is not None:
            return np.zeros((int(n_slices), spec.size, spec.size), dtype=np.uint8)
        return None
    if not mask_path.is_file():
        raise InputError(f"mask {row.extra[MASK_COLUMN]} of scan {row.path} not found")
    if cache is None:
        return _compute(row, root, mask_path, spec)
    scan_path = row.resolved_path(root)
    key = volume_key_parts(source_files(scan_path), spec.to_dict(), what="seg_mask", layout=1,
                           path=str(scan_path.resolve()), series_uid=row.extra.get("series_uid", ""),
                           mask=fingerprint_files([mask_path]), mask_labels=row.extra.get(LABELS_COLUMN, ""))
    return cache.get_or_compute(key, lambda: _compute(row, root, mask_path, spec))


def cohort_masks(cohort: PreparedCohort, scan_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """{scan_id: prepared labels (Z, size, size)} of the scans that have them (`prepared_mask`),
    checked against the prepared image's slice count."""
    out = {}
    for sid in scan_ids:
        scan = cohort[sid]
        m = prepared_mask(cohort.row(sid), cohort.root, cohort.spec, cohort.cache, scan.n_slices)
        if m is None:
            continue
        if m.shape[0] != scan.n_slices:
            raise InputError(f"scan {sid!r}: its prepared mask has {m.shape[0]} slices but the prepared image "
                             f"{scan.n_slices} (stale cache?)", cohort.manifest_path)
        out[sid] = m
    return out


__all__ = ["LABELS_COLUMN", "MASK_COLUMN", "cohort_masks", "prepared_mask", "row_mask_path"]
