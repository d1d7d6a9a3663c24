"""Anatomy: which slices show the cranial cavity, where on them it lies, and where the head lies in-plane."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from ichdet.errors import InputError
from ichdet.preprocess.downsample import max_filter_2d

HEAD_THRESHOLD_HU = -500.0  # anything denser than this (skin, fat, brain, bone) can be head
BONE_THRESHOLD_HU = 300.0  # skull ring; cortical bone is 700+, partial volume pulls thin bone down
SOFT_TISSUE_HU = (0.0, 100.0)  # CSF, brain, blood inside the skull
MIN_CRANIAL_AREA_MM2 = 500.0  # soft tissue enclosed by the ring for a slice to count as cranial
SKULL_GAP_MM = 4.0  # closing half-width: bridges ear canals, sutures, partial-volume gaps in the ring
CRANIAL_PIXEL_MM = 1.0  # cranial-slice masks are block-reduced to about this pixel size
CRANIAL_Z_GAP_MM = 10.0  # non-cranial runs this short between cranial slices are filled
MIN_CAVITY_PART_MM2 = 100.0  # an enclosed part of a cranial slice is cavity if it holds this much soft tissue
CAVITY_MARGIN_MM = 2.0  # the cavity grows this far into the skull (its pixels are ~1 mm blocks)
TYPICAL_SLICE_MM = 5.0  # assumed slice spacing when none is given
TABLE_OPENING_MM = 6.0  # opening radius: removes table, headrest and text thinner than ~12 mm
TYPICAL_HEAD_FOV_MM = 250.0  # assumed field of view when the pixel size is unknown


def _pixel_mm(shape: tuple[int, ...], spacing: Sequence[float] | None) -> tuple[float, float]:
    """(row, column) pixel size in mm from a 2- or 3-value spacing, or a typical head FOV."""
    if spacing is None:
        s = TYPICAL_HEAD_FOV_MM / max(shape[-2:])
        return s, s
    sp = [float(v) for v in spacing]
    if len(sp) not in (2, 3) or min(sp) <= 0:
        raise InputError(f"spacing must be (dy, dx) or (dz, dy, dx) in mm, got {tuple(spacing)}")
    return sp[-2], sp[-1]


def _open_mm(mask: np.ndarray, radius_mm: float, pixel: tuple[float, float]) -> np.ndarray:
    """Binary opening of a 2D mask by a disk of `radius_mm`, via two distance transforms
    (cost independent of the radius). Outside the image counts as background."""
    padded = np.pad(mask, 1)
    eroded = ndimage.distance_transform_edt(padded, sampling=pixel) > radius_mm
    if not eroded.any():
        return np.zeros_like(mask)
    return (ndimage.distance_transform_edt(~eroded, sampling=pixel) <= radius_mm)[1:-1, 1:-1]


def _largest_component(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest 4-connected component of a 2D mask and its size in pixels."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask), 0
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    best = int(np.argmax(counts))
    return labels == best, int(counts[best])


def _enclosed(ring: np.ndarray) -> np.ndarray:
    """Pixels of a 2D mask's complement not connected to the image border (its holes)."""
    labels, _ = ndimage.label(~ring)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return (labels > 0) & ~np.isin(labels, border)


def cranial_slices(
    hu: np.ndarray, spacing: Sequence[float] | None = None, min_area_mm2: float = MIN_CRANIAL_AREA_MM2,
    gap_mm: float = SKULL_GAP_MM,
) -> np.ndarray:
    """(Z, H, W) HU -> bool (Z,): True where a closed skull ring (> 300 HU, gaps up to ~2x
    `gap_mm` bridged, e.g. the ear canals) encloses a connected region of soft tissue
    (0-100 HU) of at least `min_area_mm2`. Masks are block-reduced to ~1 mm pixels first
    (bone by block maximum, so thin bone survives). The cavity is one block along z, so gaps
    of up to 10 mm between cranial slices (open rings at the skull base) are filled."""
    return _skull_rings(hu, spacing, min_area_mm2, gap_mm, cavity=False)[0]


def cranial_cavity(
    hu: np.ndarray, spacing: Sequence[float] | None = None, margin_mm: float = CAVITY_MARGIN_MM,
) -> tuple[np.ndarray, np.ndarray]:
    """(Z, H, W) HU -> (`cranial_slices`' flags bool (Z,), cavity bool (Z, H, W)): where an
    intracranial bleed can lie. On a cranial slice the cavity is what the closed skull ring encloses
    (every part holding at least `MIN_CAVITY_PART_MM2` of soft tissue: the posterior and middle
    fossae at the skull base, not an enclosed sinus), grown by `margin_mm` into the bone so the
    ~1 mm pixels never clip a subdural or epidural rim; scalp, muscle and the soft tissue of the face
    and neck lie outside it. On a cranial slice whose ring stays open (filled between two closed
    ones) it is the union of the nearest closed slices' cavities above and below. Every slice is
    all cavity when no slice is cranial; otherwise the other slices have none."""
    return _skull_rings(hu, spacing, MIN_CRANIAL_AREA_MM2, SKULL_GAP_MM, cavity=True, margin_mm=margin_mm)


def _skull_rings(hu: np.ndarray, spacing: Sequence[float] | None, min_area_mm2: float, gap_mm: float,
                 cavity: bool, margin_mm: float = CAVITY_MARGIN_MM) -> tuple[np.ndarray, np.ndarray | None]:
    """`cranial_slices`' flags, and with `cavity` `cranial_cavity`'s mask (else None)."""
    hu = np.asarray(hu)
    if hu.ndim != 3 or min(hu.shape) == 0:
        name = "cranial_cavity" if cavity else "cranial_slices"
        raise InputError(f"{name} expects (Z, H, W) HU, got shape {hu.shape}")
    dy, dx = _pixel_mm(hu.shape, spacing)
    f = max(1, int(CRANIAL_PIXEL_MM / max(dy, dx)))
    bone = max_filter_2d(hu > BONE_THRESHOLD_HU, f)
    soft = max_filter_2d((hu >= SOFT_TISSUE_HU[0]) & (hu <= SOFT_TISSUE_HU[1]), f) & ~bone
    pixel_mm2 = dy * dx * f * f
    size = (2 * max(1, round(gap_mm / (dy * f))) + 1, 2 * max(1, round(gap_mm / (dx * f))) + 1)
    out = np.zeros(hu.shape[0], dtype=bool)
    inside = np.zeros(bone.shape, dtype=bool) if cavity else None
    for z in range(hu.shape[0]):
        if soft[z].sum() * pixel_mm2 < min_area_mm2 or not bone[z].any():
            continue
        # closing by a square (separable, fast): bridges gaps in the ring
        ring = ndimage.minimum_filter(ndimage.maximum_filter(bone[z], size=size, mode="constant"),
                                      size=size, mode="constant")
        enclosed = _enclosed(ring)
        _, area = _largest_component(enclosed & soft[z])
        out[z] = area * pixel_mm2 >= min_area_mm2
        if cavity and out[z]:
            parts, n = ndimage.label(enclosed)
            soft_px = np.bincount(parts[soft[z]], minlength=n + 1)
            keep = soft_px * pixel_mm2 >= MIN_CAVITY_PART_MM2
            keep[0] = False
            inside[z] = keep[parts]
    flags = _fill_short_gaps(out, int(CRANIAL_Z_GAP_MM // _slice_mm(spacing)))
    if not cavity:
        return flags, None
    closed = np.flatnonzero(out)
    for z in np.flatnonzero(flags & ~out):  # filled between closed rings: the ring is open here
        below, above = closed[closed < z].max(), closed[closed > z].min()
        inside[z] = inside[below] | inside[above]
    grow = max(1, round(margin_mm / (min(dy, dx) * f)))
    disk = np.hypot(*np.mgrid[-grow:grow + 1, -grow:grow + 1]) <= grow
    inside = ndimage.binary_dilation(inside, structure=disk[None])
    h, w = hu.shape[1:]
    mask = inside.repeat(f, axis=1).repeat(f, axis=2)[:, :h, :w]
    if not flags.any():
        mask[:] = True
    return flags, mask


def _slice_mm(spacing: Sequence[float] | None) -> float:
    return float(spacing[0]) if spacing is not None and len(spacing) == 3 else TYPICAL_SLICE_MM


def _fill_short_gaps(flags: np.ndarray, max_gap: int) -> np.ndarray:
    """Set runs of at most `max_gap` False values that lie between two True values to True."""
    idx = np.flatnonzero(flags)
    out = flags.copy()
    for a, b in zip(idx[:-1], idx[1:]):
        if 1 < b - a <= max_gap + 1:
            out[a + 1:b] = True
    return out


def head_mask(hu: np.ndarray, spacing: Sequence[float] | None = None,
              threshold: float = HEAD_THRESHOLD_HU) -> np.ndarray:
    """(H, W) or (Z, H, W) -> bool (H, W): the head in-plane (union over slices for a volume).

    Pixels above `threshold` (HU; pass e.g. 10 for an 8-bit windowed image) are opened with a
    6 mm disk, which removes the scanner table, headrest and burnt-in text, then the largest
    connected component is kept, holes filled. Unknown spacing assumes a 250 mm field of view.
    """
    hu = np.asarray(hu)
    if hu.ndim not in (2, 3) or min(hu.shape) == 0:
        raise InputError(f"head_mask expects (H, W) or (Z, H, W), got shape {hu.shape}")
    dense = hu > threshold
    if dense.ndim == 3:
        dense = dense.any(axis=0)
    head, _ = _largest_component(_open_mm(dense, TABLE_OPENING_MM, _pixel_mm(hu.shape, spacing)))
    return head | _enclosed(head)


def head_box(mask: np.ndarray, margin: int = 4) -> tuple[int, int, int, int] | None:
    """Bool (H, W) -> (row0, row1, col0, col1), half-open, widened by `margin` px; None if empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    h, w = mask.shape
    return (max(0, rows[0] - margin), min(h, rows[-1] + 1 + margin),
            max(0, cols[0] - margin), min(w, cols[-1] + 1 + margin))


def crop_to_head(img: np.ndarray, spacing: Sequence[float] | None = None, threshold: float = HEAD_THRESHOLD_HU,
                 margin: int = 4, blank_outside: bool = True, fill: float | None = None) -> np.ndarray:
    """(..., H, W) -> (..., h, w): the head's bounding box (same box for every leading index).

    With `blank_outside`, pixels off the head mask (dilated by `margin` px) are set to `fill`
    (default: the image minimum), so table fragments inside the box vanish too.
    No head found: the image is returned unchanged.
    """
    img = np.asarray(img)
    if img.ndim < 2 or min(img.shape) == 0:
        raise InputError(f"crop_to_head expects (..., H, W), got shape {img.shape}")
    mask = head_mask(img.reshape(-1, *img.shape[-2:]), spacing, threshold)
    box = head_box(mask, margin)
    if box is None:
        return img
    r0, r1, c0, c1 = box
    out = img[..., r0:r1, c0:c1]
    if blank_outside:
        keep = ndimage.binary_dilation(mask, iterations=max(1, margin))[r0:r1, c0:c1]
        out = out.copy()
        out[..., ~keep] = img.min() if fill is None else fill
    return out
