"""Readers and writers: DICOM series, NIfTI and 2D images -> `Volume` (HU, geometry, ids)."""
from __future__ import annotations

import zipfile
from pathlib import Path

from ichdet.errors import InputError
from ichdet.io.dicom import read_dicom_series, scan_series
from ichdet.io.dicom_write import write_dicom_series
from ichdet.io.images import is_image, read_image
from ichdet.io.nifti import is_nifti, read_nifti, write_nifti
from ichdet.io.volume import Volume


def read_volume(path: str | Path, series_uid: str | None = None) -> Volume:
    """Read whatever `path` is: a DICOM folder or zip, a NIfTI file, an image or one DICOM file."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or folder", p)
    if not (p.is_dir() or p.is_file()):
        raise InputError("not a regular file or folder (a pipe, socket or device?)", p)
    if p.is_file() and is_nifti(p):
        return read_nifti(p)
    if p.is_file() and is_image(p):
        return read_image(p)
    if p.is_dir() or zipfile.is_zipfile(p) or p.suffix.lower() == ".zip":
        return read_dicom_series(p, series_uid=series_uid)
    return read_dicom_series([p], series_uid=series_uid)


__all__ = ["Volume", "read_volume", "read_dicom_series", "scan_series", "read_nifti", "read_image",
           "write_dicom_series", "write_nifti", "is_image", "is_nifti"]
