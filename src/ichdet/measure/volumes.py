"""Bleed volumes from a label mask: mL per subtype, and the bedside ABC/2 estimate.

A label mask is uint8 (Z, H, W) in the geometry of a `Volume`: 0 = no bleed, i + 1 = SUBTYPES[i].
Spacing is `Volume.spacing`, (dz, dy, dx) in mm; dz is the slice interval, used as the slice
thickness (the two are equal in the axial series these masks come from).

ABC/2 (Kwak et al., Stroke 1989; Kothari et al., Stroke 1996, "The ABCs of measuring intracerebral
hemorrhage volumes") is what a reader computes at the bedside: on the slice where the haematoma is
largest, A = its longest diameter, B = its largest diameter perpendicular to A, C = the number of
slices it covers times the slice thickness; volume = A·B·C / 2, the volume of an ellipsoid with
diameters A, B, C taken as A·B·C·π/6 with π ≈ 3. Kothari's rule weights each slice by the
haematoma's area there relative to the largest slice: 1 if >= 75 %, 0.5 if 25-75 %, 0 below 25 %.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from ichdet.datasets.manifest import SUBTYPES
from ichdet.errors import InputError

ML_PER_MM3 = 1e-3  # 1 mL = 1 cm^3 = 1000 mm^3
N_LABELS = len(SUBTYPES)  # labels 1..5; 0 = no bleed
KOTHARI_FULL = 0.75  # a slice whose lesion area is >= 75 % of the largest counts as one slice
KOTHARI_HALF = 0.25  # 25-75 % counts as half a slice, below 25 % as none
C_RULES = ("kothari", "all_slices")


def check_spacing(spacing: Any, path: str | Path | None = None) -> tuple[float, float, float]:
    """(dz, dy, dx) in mm as three positive finite floats, or InputError naming the value."""
    try:
        s = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise InputError(f"spacing must be three numbers (dz, dy, dx) in mm, got {spacing!r}", path) from None
    if len(s) != 3 or not all(math.isfinite(v) and v > 0 for v in s):
        raise InputError(f"spacing must be three positive numbers (dz, dy, dx) in mm, got {spacing!r}", path)
    return s  # type: ignore[return-value]


def check_label_mask(mask: Any, path: str | Path | None = None) -> np.ndarray:
    """The mask as an integer array (Z, H, W) of labels 0..5; InputError names a bad shape or value
    and the voxel (z, y, x) that holds it."""
    m = np.asarray(mask)
    if m.ndim != 3:
        raise InputError(f"label mask must have shape (Z, H, W), got shape {m.shape}", path)
    if m.dtype == bool:
        return m.astype(np.uint8)
    if not np.issubdtype(m.dtype, np.integer):
        if not np.issubdtype(m.dtype, np.floating):
            raise InputError(f"label mask must hold integer labels, got dtype {m.dtype}", path)
        bad = ~np.isfinite(m) | (m != np.round(m))
        if bad.any():
            z, y, x = np.argwhere(bad)[0]
            raise InputError(f"label mask holds non-integer value {float(m[z, y, x]):g} at voxel (z={z}, y={y}, x={x})",
                             path)
    bad = (m < 0) | (m > N_LABELS)
    if bad.any():
        z, y, x = np.argwhere(bad)[0]
        raise InputError(f"label mask holds value {float(m[z, y, x]):g} at voxel (z={z}, y={y}, x={x}); labels are 0 "
                         f"(no bleed) and 1..{N_LABELS} ({', '.join(SUBTYPES)})", path)
    return m.astype(np.uint8, copy=False)


def voxel_ml(spacing: Any) -> float:
    """The volume of one voxel in mL from (dz, dy, dx) mm."""
    dz, dy, dx = check_spacing(spacing)
    return dz * dy * dx * ML_PER_MM3


def label_volumes_ml(mask: Any, spacing: Any, path: str | Path | None = None) -> dict[str, float]:
    """{subtype: mL for each of SUBTYPES, "total": mL of any bleed} from a label mask (Z, H, W) and its
    spacing (dz, dy, dx) mm; `path` (the mask's file) prefixes error messages."""
    m = check_label_mask(mask, path)
    dz, dy, dx = check_spacing(spacing, path)
    per_voxel = dz * dy * dx * ML_PER_MM3
    counts = np.bincount(m.ravel(), minlength=N_LABELS + 1)
    out = {name: float(counts[i + 1] * per_voxel) for i, name in enumerate(SUBTYPES)}
    out["total"] = float(counts[1:].sum() * per_voxel)
    return out


@dataclass(frozen=True)
class ABC2:
    """The ABC/2 estimate of one lesion. Diameters in mm, volume in mL; `slice_index` is the slice
    (counted from the most inferior) on which A and B were measured. An empty mask gives volume 0,
    NaN diameters, slice_index None and lesion_voxels 0."""

    volume_ml: float
    a_mm: float
    b_mm: float
    c_mm: float
    slice_index: int | None
    lesion_voxels: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN diameters become None."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def largest_lesion(mask: Any) -> np.ndarray:
    """bool (Z, H, W): the largest 3D connected component of `mask` != 0 (face connectivity,
    scipy.ndimage.label's default); of equally large ones, the first met scanning up from the most inferior
    slice; all False if empty."""
    m = np.asarray(mask) != 0
    if m.ndim != 3:
        raise InputError(f"lesion mask must have shape (Z, H, W), got shape {m.shape}")
    labels, n = ndimage.label(m)
    if n == 0:
        return m
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def diameters_mm(region: np.ndarray, dy: float, dx: float) -> tuple[float, float]:
    """(A, B) of a 2D region (H, W) bool with pixel size dy, dx mm: A = the longest distance across it,
    B = its extent perpendicular to A (for a convex region, the longest chord perpendicular to A).
    Measured on the outline through the midpoints of the pixels' edges (where marching squares draws the
    half-level contour, as skimage's `feret_diameter_max` measures): edge to edge along the image axes,
    without the pixel corners' overshoot on a diagonal."""
    # Edge midpoints of the pixel [r, r+1] x [c, c+1]: (r, c+.5), (r+1, c+.5), (r+.5, c), (r+.5, c+1). Of the
    # points on one horizontal line only the two outermost can be hull vertices, so each row contributes
    # those of its first and last pixel (a row's pixels need not be contiguous: the rest lie between).
    region = np.asarray(region, bool)
    rows = np.flatnonzero(region.any(axis=1)).astype(np.float64)
    inside = region[rows.astype(np.intp)]
    first = inside.argmax(axis=1).astype(np.float64)
    last = (inside.shape[1] - 1 - inside[:, ::-1].argmax(axis=1)).astype(np.float64)
    points = np.concatenate([np.stack([rows + i, col + j], axis=1)
                             for i in (0.0, 1.0) for col, j in ((first, 0.5), (last, 0.5))]
                            + [np.stack([rows + 0.5, first], axis=1), np.stack([rows + 0.5, last + 1.0], axis=1)])
    points = np.unique(points * np.array([dy, dx]), axis=0)
    hull = points[ConvexHull(points).vertices]  # (h, 2) mm
    d = np.linalg.norm(hull[:, None, :] - hull[None, :, :], axis=-1)
    i, j = np.unravel_index(int(np.argmax(d)), d.shape)
    a = float(d[i, j])
    normal = np.array([-(hull[j, 1] - hull[i, 1]), hull[j, 0] - hull[i, 0]]) / a
    proj = hull @ normal
    return a, float(proj.max() - proj.min())


def slice_weights(areas: np.ndarray, rule: str = "kothari") -> np.ndarray:
    """Per-slice weights (Z,) for C from the lesion's area on each slice (Z,): Kothari's 1 / 0.5 / 0 by
    area relative to the largest (>= 75 %, 25-75 %, < 25 %), or "all_slices": 1 for every slice it touches."""
    if rule not in C_RULES:
        raise InputError(f"unknown ABC/2 C rule {rule!r}; use {' or '.join(map(repr, C_RULES))}")
    areas = np.asarray(areas, dtype=np.float64)
    if rule == "all_slices" or areas.max(initial=0) == 0:
        return (areas > 0).astype(np.float64)
    rel = areas / areas.max()
    return np.where(rel >= KOTHARI_FULL, 1.0, np.where(rel >= KOTHARI_HALF, 0.5, 0.0))


def abc2(mask: Any, spacing: Any, c_rule: str = "kothari") -> ABC2:
    """ABC/2 of the largest connected lesion of `mask` (Z, H, W), nonzero = bleed, spacing (dz, dy, dx) mm.

    A and B on the slice where that lesion's area is largest (the most inferior of equal ones), C = the
    sum of the slice weights (`slice_weights`, Kothari's rule by default) times dz. For an ellipsoid,
    A·B·C/2 with C over all slices is 3/π ≈ 0.955 of its volume; Kothari's weights shorten C to about
    0.68-0.7 of the lesion's height, so ABC/2 reads about 0.65 of a regular ellipsoid's volume."""
    dz, dy, dx = check_spacing(spacing)
    slice_weights(np.zeros(1), c_rule)  # validates the rule
    m = np.asarray(mask)
    if m.ndim != 3:
        raise InputError(f"lesion mask must have shape (Z, H, W), got shape {m.shape}")
    box = bleed_box(m)
    if box is None:
        return ABC2(0.0, math.nan, math.nan, math.nan, None, 0)
    lesion = largest_lesion(m[box])  # the bleed's bounding box only: labelling is the costly step
    areas = lesion.sum(axis=(1, 2))
    k = int(np.argmax(areas))
    a, b = diameters_mm(lesion[k], dy, dx)
    c = float(slice_weights(areas, c_rule).sum() * dz)
    return ABC2(a * b * c / 2 * ML_PER_MM3, a, b, c, box[0].start + k, int(areas.sum()))


def bleed_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The bounding box (z, y, x slices) of the nonzero voxels of `mask` (Z, H, W), or None if there are none."""
    nz = mask != 0
    spans = []
    for axis in range(3):
        hit = np.flatnonzero(nz.any(axis=tuple(i for i in range(3) if i != axis)))
        if hit.size == 0:
            return None
        spans.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(spans)  # type: ignore[return-value]
