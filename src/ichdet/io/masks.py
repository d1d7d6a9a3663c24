"""Reading label masks (NIfTI) onto the voxel grid of their scan.

A label mask is uint8 (Z, H, W) in the geometry of a `Volume`: 0 no bleed, i + 1 = SUBTYPES[i]
(what `ichdet synth` writes). Masks that know only "bleed" (PhysioNet CT-ICH: 0/1 or 0/255) are
read by `mask_targets` as `UNKNOWN_SUBTYPE` wherever they are non-zero: a bleed of unknown subtype,
which segmentation training learns only as bleed vs background.

The stored (i, j, k) axes are reoriented onto the scan's (column, row, slice) axes from the two
affines' orientations (`nibabel.orientations`, as `read_nifti` does for volumes), so a mask lands
in the scan's (Z, H, W) order whether the scan came from NIfTI or DICOM; then the shapes must agree.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

from ichdet.errors import InputError
from ichdet.io.volume import Volume

N_SUBTYPE_LABELS = 5  # labels 1..5 name subtypes (SUBTYPES order)
UNKNOWN_SUBTYPE = 6  # prepared-mask label of a bleed whose subtype the mask does not give
MASK_LABELS = ("subtypes", "any")  # the manifest's `mask_labels` values: labels 1..5, or any non-zero = bleed


def read_mask(path: str | Path, volume: Volume, mask_name: str | None = None, scan_name: str | None = None
              ) -> np.ndarray:
    """A NIfTI label mask -> uint8 (Z, H, W) on `volume`'s voxel grid, values as stored.

    InputError (one line, naming both files: `mask_name` / `scan_name` as the user wrote them,
    default the paths) when the file is unreadable, holds non-integer or out-of-range values, or
    its shape on the scan's axes differs from the scan's."""
    path = Path(path)
    mask_name = str(path) if mask_name is None else mask_name
    scan_name = (volume.source[0] if len(volume.source) == 1 else str(Path(volume.source[0]).parent)
                 if volume.source else "(volume)") if scan_name is None else scan_name
    if not path.is_file():
        raise InputError(f"mask {mask_name} of scan {scan_name} not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as e:  # noqa: BLE001 - nibabel and gzip raise many types on damaged files
        raise InputError(f"mask {mask_name} is not a readable NIfTI file ({e.__class__.__name__}: {e})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"mask {mask_name} must be a 3D volume, got shape {tuple(data.shape)}")
    values = np.unique(data)
    bad = values[(values < 0) | (values > 255) | (values != np.round(values))] if values.dtype.kind == "f" \
        else values[(values < 0) | (values > 255)]
    if bad.size:
        raise InputError(f"mask {mask_name} holds label value {bad[0]:g}; labels are integers 0..255")
    try:
        t = ornt_transform(io_orientation(img.affine), io_orientation(volume.affine_ras()))
    except ValueError as e:
        raise InputError(f"mask {mask_name} has an affine with no orientation ({e})") from None
    labels = np.ascontiguousarray(apply_orientation(data, t).transpose(2, 1, 0)).astype(np.uint8)
    if labels.shape != volume.shape:
        raise InputError(f"mask {mask_name} has shape {labels.shape} but its scan {scan_name} has {volume.shape}")
    return labels


def mask_targets(labels: np.ndarray, mask_labels: str = "subtypes") -> np.ndarray:
    """Stored labels (Z, H, W) -> training labels uint8: 0..5 as they are, or, for a mask that
    gives only bleed (`mask_labels` "any", or any value above 5, e.g. 255), `UNKNOWN_SUBTYPE`
    wherever it is non-zero."""
    if mask_labels not in MASK_LABELS:
        raise InputError(f"mask_labels must be one of {', '.join(MASK_LABELS)}, got {mask_labels!r}")
    m = np.asarray(labels, dtype=np.uint8)
    if mask_labels == "any" or (m.size and int(m.max()) > N_SUBTYPE_LABELS):
        return np.where(m > 0, UNKNOWN_SUBTYPE, 0).astype(np.uint8)
    return m


__all__ = ["MASK_LABELS", "N_SUBTYPE_LABELS", "UNKNOWN_SUBTYPE", "mask_targets", "read_mask"]
