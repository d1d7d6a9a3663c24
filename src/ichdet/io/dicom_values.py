"""Header values of a DICOM file read safely: a damaged element is an `InputError` naming the file.

pydicom converts an element's raw bytes on first access, so a file whose header parsed can still
raise a library error (an unknown VR, bytes that are no number) when an element is used.
`check_elements` converts the elements the readers use right after the header is read, and
`int_value` / `optional_float` turn their values into numbers.
"""
from __future__ import annotations

import math
from pathlib import Path

from pydicom.dataset import Dataset

from ichdet.errors import InputError

READ_KEYWORDS = (  # every element the readers look at, besides PixelData
    "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "Modality", "SeriesDescription",
    "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation",
    "RescaleSlope", "RescaleIntercept", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
    "SliceThickness", "GantryDetectorTilt",
)


def check_elements(ds: Dataset, path: Path) -> None:
    """Convert the elements in `READ_KEYWORDS` now; InputError naming the first that cannot be read."""
    for keyword in READ_KEYWORDS:
        try:
            ds.get(keyword)
        except Exception as e:  # noqa: BLE001 - pydicom raises many types on a damaged element
            raise InputError(f"corrupt DICOM header: {keyword} cannot be read ({e.__class__.__name__}: {e})", path) from None


def int_value(ds: Dataset, keyword: str, path: Path, default: int) -> int:
    """An integer element's value, `default` when it is absent or empty; InputError when it is no integer."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{keyword} is not an integer, got {value!r}", path) from None


def optional_float(ds: Dataset, keyword: str) -> float | None:
    """A number the readers only report (a thickness, a tilt): None when absent, empty or no finite number."""
    value = ds.get(keyword)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None
