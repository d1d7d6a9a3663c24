"""Header-only DICOM reading for the adapters: ids, geometry and series description, no pixels."""
from __future__ import annotations

import io
import struct
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

HEADER_TAGS = [
    "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "Modality",
    "ImagePositionPatient", "ImageOrientationPatient", "SliceThickness", "ConvolutionKernel",
    "SeriesDescription", "ImageType", "InstanceNumber",
]
# What a broken or non-DICOM file raises while its header is parsed.
READ_ERRORS = (InvalidDicomError, OSError, ValueError, TypeError, KeyError, IndexError,
               AttributeError, EOFError, struct.error)


@dataclass(frozen=True)
class DicomHeader:
    """The header fields the adapters use; `source` is a path or '<zip>::<member>'."""

    source: str
    series_uid: str
    sop_uid: str = ""
    study_uid: str = ""
    patient_id: str = ""
    modality: str = ""
    position: tuple[float, float, float] | None = None     # ImagePositionPatient, LPS mm
    orientation: tuple[float, ...] | None = None           # ImageOrientationPatient (6 values)
    thickness: float | None = None                          # SliceThickness, mm
    kernel: str = ""
    description: str = ""
    image_type: str = ""                                    # ImageType values joined by '\'
    instance: int | None = None


def _text(ds: pydicom.Dataset, name: str) -> str:
    v = ds.get(name)
    if v is None:
        return ""
    if isinstance(v, (list, tuple, MultiValue)):
        return "\\".join(str(x) for x in v)
    return str(v).strip()


def _floats(ds: pydicom.Dataset, name: str, n: int) -> tuple[float, ...] | None:
    v = ds.get(name)
    if v is None:
        return None
    vals = tuple(float(x) for x in v)
    if len(vals) != n or not all(np.isfinite(vals)):
        raise ValueError(f"{name} must have {n} finite numbers, got {list(v)}")
    return vals


def _optional_float(v: object) -> float | None:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) and f > 0 else None


def header_from_dataset(ds: pydicom.Dataset, source: str) -> DicomHeader:
    """Pick our fields from a parsed dataset; ValueError when SeriesInstanceUID is missing."""
    series = _text(ds, "SeriesInstanceUID")
    if not series:
        raise ValueError("no SeriesInstanceUID")
    thick = ds.get("SliceThickness")
    inst = ds.get("InstanceNumber")
    return DicomHeader(
        source=source, series_uid=series, sop_uid=_text(ds, "SOPInstanceUID"),
        study_uid=_text(ds, "StudyInstanceUID"), patient_id=_text(ds, "PatientID"),
        modality=_text(ds, "Modality").upper(),
        position=_floats(ds, "ImagePositionPatient", 3),  # type: ignore[arg-type]
        orientation=_floats(ds, "ImageOrientationPatient", 6),
        thickness=_optional_float(thick),
        kernel=_text(ds, "ConvolutionKernel"), description=_text(ds, "SeriesDescription"),
        image_type=_text(ds, "ImageType").upper(),
        instance=int(inst) if inst not in (None, "") else None,
    )


def read_header(path: str | Path) -> DicomHeader | str:
    """One file's header, or a one-line reason why it cannot be read."""
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=HEADER_TAGS)
        return header_from_dataset(ds, str(path))
    except READ_ERRORS as e:
        return f"{path}: {e.__class__.__name__}: {' '.join(str(e).split())[:200]}"


def read_header_bytes(data: bytes, source: str) -> DicomHeader | str:
    """Header from the first bytes of a file (e.g. a zip member); reason string on failure."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=HEADER_TAGS)
        return header_from_dataset(ds, source)
    except READ_ERRORS as e:
        return f"{source}: {e.__class__.__name__}: {' '.join(str(e).split())[:200]}"


def read_headers(paths: list[Path], workers: int = 1) -> tuple[list[DicomHeader], list[str]]:
    """Headers of many files (in `workers` processes when > 1): (headers, problems)."""
    if workers > 1 and len(paths) > 256:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(read_header, paths, chunksize=256))
    else:
        results = [read_header(p) for p in paths]
    headers = [r for r in results if isinstance(r, DicomHeader)]
    problems = [r for r in results if isinstance(r, str)]
    return headers, problems


def slice_normal(orientation: tuple[float, ...]) -> np.ndarray:
    """Unit normal (LPS) of a slice: row direction x column direction, turned to point superior.

    Pointing it superior (z >= 0) makes ascending projections run from the most inferior slice.
    """
    iop = np.asarray(orientation, dtype=np.float64)
    n = np.cross(iop[:3], iop[3:6])
    norm = np.linalg.norm(n)
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError(f"ImageOrientationPatient rows are parallel or zero: {list(orientation)}")
    n = n / norm
    return -n if n[2] < 0 else n


def tilt_from_axial_deg(orientation: tuple[float, ...]) -> float:
    """Angle (degrees) between the slice normal and the patient z axis."""
    return float(np.degrees(np.arccos(np.clip(abs(slice_normal(orientation)[2]), 0.0, 1.0))))


def order_slices(headers: list[DicomHeader]) -> list[DicomHeader]:
    """Sort one series inferior -> superior by ImagePositionPatient projected on the slice normal.

    Never by file name or InstanceNumber (ties only fall back to the file name, for a stable order).
    Raises ValueError when a slice lacks position or orientation.
    """
    if not headers:
        return []
    missing = [h.source for h in headers if h.position is None or h.orientation is None]
    if missing:
        raise ValueError(f"{len(missing)} slice(s) lack ImagePositionPatient/ImageOrientationPatient,"
                         f" e.g. {missing[0]}")
    normal = slice_normal(headers[0].orientation)  # type: ignore[arg-type]
    return sorted(headers, key=lambda h: (float(np.dot(h.position, normal)), h.source))  # type: ignore[arg-type]


def median_spacing(headers: list[DicomHeader]) -> float | None:
    """Median distance (mm) between consecutive ordered slice positions, None if unknown."""
    try:
        ordered = order_slices(headers)
    except ValueError:
        return None
    if len(ordered) < 2:
        return None
    normal = slice_normal(ordered[0].orientation)  # type: ignore[arg-type]
    z = np.array([np.dot(h.position, normal) for h in ordered])  # type: ignore[arg-type]
    gaps = np.diff(z)
    gaps = gaps[gaps > 1e-3]
    return float(np.median(gaps)) if gaps.size else None
