"""Read a DICOM CT series into a `Volume` in Hounsfield units.

Files are grouped by SeriesInstanceUID, one series is picked (the one asked for, else the
largest axial CT series), slices are ordered by ImagePositionPatient projected on the slice
normal, and each slice becomes HU with its own RescaleSlope/Intercept. Pixel data is read
lazily, only for the series picked, one slice at a time, so peak memory stays near the size
of the float32 volume.
"""
from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ichdet.errors import InputError, InputWarning
from ichdet.io.dicom_pixels import slice_to_hu
from ichdet.io.dicom_values import check_elements, int_value, optional_float
from ichdet.io.sources import resolve_inputs
from ichdet.io.volume import Volume, affine_from_geometry

log = logging.getLogger(__name__)

AXIAL_MAX_ANGLE_DEG = 45.0  # a series whose normal is within this angle of z counts as axial
POSITION_TOL_MM = 0.01  # two slices closer than this along the normal share a position
GAP_FACTOR = 1.5  # a step this many times the median spacing is reported as a gap
MAX_SLICES = 5000
MAX_VOLUME_BYTES = 8 * 1024**3  # float32 bytes a series may need before we refuse to allocate
DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))


@dataclass
class SeriesSummary:
    """What a folder holds, per series, before any pixel is decoded."""

    series_uid: str
    n_files: int
    modality: str
    description: str
    rows: int
    columns: int
    axial: bool
    files: list[Path] = field(default_factory=list, repr=False)
    headers: list[Dataset] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"series_uid": self.series_uid, "n_files": self.n_files, "modality": self.modality,
                "description": self.description, "rows": self.rows, "columns": self.columns, "axial": self.axial}


DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def _read_header(path: Path) -> Dataset | None:
    """Header with pixel data deferred; None for files that are plainly not DICOM (no preamble,
    no DICOM suffix). A file that claims to be DICOM (preamble or suffix) but cannot be parsed is
    an error, not something to skip: a silently skipped slice would be a hole in the scan."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as e:
        raise InputError(f"cannot read file ({e.strerror})", path) from None
    has_preamble = len(head) == 132 and head[128:132] == b"DICM"
    claims_dicom = has_preamble or path.suffix.lower() in DICOM_SUFFIXES
    if not head:
        if claims_dicom:
            raise InputError("file is empty (0 bytes): truncated DICOM", path)
        return None
    try:
        ds = pydicom.dcmread(path, defer_size=2048, force=claims_dicom and not has_preamble)
        check_elements(ds, path)
    except InvalidDicomError:
        if claims_dicom:
            raise InputError("not a valid DICOM file", path) from None
        return None
    except InputError:
        if not claims_dicom:
            return None
        raise
    except Exception as e:  # noqa: BLE001 - pydicom raises many types on damaged files
        if not claims_dicom:
            return None
        raise InputError(f"corrupt or truncated DICOM header ({e.__class__.__name__}: {e})", path) from None
    if claims_dicom and "PixelData" not in ds and ("Rows" in ds or "SOPClassUID" not in ds):
        raise InputError("no pixel data (7FE0,0010) in an image file: truncated or corrupt", path)
    return ds


def _floats(ds: Dataset, keyword: str, n: int, path: Path) -> np.ndarray | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        arr = np.asarray([float(v) for v in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value])], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{keyword} is not numeric, got {value!r}", path) from None
    if arr.size != n or not np.all(np.isfinite(arr)):
        raise InputError(f"{keyword} must hold {n} finite numbers, got {value!r}", path)
    return arr


def _fmt(values: np.ndarray) -> str:
    """Numbers as a user reads them in a message: [1, 0, 0, 0, 0.989, -0.148]."""
    return "[" + ", ".join(f"{float(v) + 0.0:.6g}" for v in values) + "]"  # + 0.0 turns -0 into 0


def _normal(iop: np.ndarray) -> np.ndarray:
    n = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else np.array([0.0, 0.0, 1.0])


def _is_axial(ds: Dataset, path: Path) -> bool:
    iop = _floats(ds, "ImageOrientationPatient", 6, path)
    if iop is None:
        return True
    return bool(abs(_normal(iop)[2]) >= np.cos(np.radians(AXIAL_MAX_ANGLE_DEG)))


def scan_series(path: str | Path | Sequence[str | Path]) -> list[SeriesSummary]:
    """Group the DICOM files under `path` by SeriesInstanceUID, largest first (headers only)."""
    with resolve_inputs(path) as (files, label):
        return _group(files, label)


def _group(files: list[Path], label: str) -> list[SeriesSummary]:
    groups: dict[str, SeriesSummary] = {}
    for f in files:
        ds = _read_header(f)
        if ds is None or "PixelData" not in ds:
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "(no SeriesInstanceUID)")
        g = groups.get(uid)
        if g is None:
            g = groups[uid] = SeriesSummary(uid, 0, str(ds.get("Modality", "") or ""), str(ds.get("SeriesDescription", "") or ""),
                                            int_value(ds, "Rows", f, 0), int_value(ds, "Columns", f, 0), _is_axial(ds, f))
        g.files.append(f)
        g.headers.append(ds)
        g.n_files += 1
    if not groups:
        raise InputError(f"no DICOM images found ({len(files)} file(s) looked at)", label)
    return sorted(groups.values(), key=lambda g: (-g.n_files, g.series_uid))


def pick_series(series: list[SeriesSummary], series_uid: str | None, label: str) -> tuple[SeriesSummary, list[str]]:
    """The series asked for, else the largest axial CT series; returns it and warnings about the rest."""
    if series_uid:
        for s in series:
            if s.series_uid == series_uid:
                return s, []
        raise InputError(f"series {series_uid} not found; available: {', '.join(s.series_uid for s in series)}", label)
    ct = [s for s in series if s.modality.upper() in ("CT", "")]
    if not ct:
        found = ", ".join(sorted({s.modality or "?" for s in series}))
        raise InputError(f"no CT series found (Modality {found}); ichdet reads CT only", label)
    chosen = next((s for s in ct if s.axial), ct[0])
    notes = [f"also found series {s.series_uid} ({s.n_files} file(s), {s.modality or '?'}, "
             f"'{s.description}'{'' if s.axial else ', not axial'}); pass series_uid/--series to read it"
             for s in series if s is not chosen]
    return chosen, notes


def read_dicom_series(path: str | Path | Sequence[str | Path], series_uid: str | None = None) -> Volume:
    """Read one CT series from a folder, a list of files or a zip into a HU `Volume`.

    Returns a Volume with ``hu`` float32 (Z, H, W), slices ordered inferior to superior along the
    slice normal; ``info`` reports the series found, gantry tilt, spacing, gaps, duplicates and warnings.
    """
    with resolve_inputs(path) as (files, label):
        series = _group(files, label)
        chosen, notes = pick_series(series, series_uid, label)
        volume = _assemble(chosen, label, zipped=str(label).lower().endswith(".zip"))
    volume.info["series_found"] = [s.to_dict() for s in series]
    volume.info["warnings"] = notes + volume.info.get("warnings", [])
    for note in volume.info["warnings"]:
        warnings.warn(f"{label}: {note}", InputWarning, stacklevel=2)
    return volume


def _geometry(headers: list[Dataset], files: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(iop (6,), pixel spacing (2,) [row, col], positions (N, 3)) checked for consistency."""
    ref, ref_file = headers[0], files[0]
    iop = _floats(ref, "ImageOrientationPatient", 6, ref_file)
    ps = _floats(ref, "PixelSpacing", 2, ref_file)
    if iop is None:
        if len(headers) > 1:
            raise InputError("ImageOrientationPatient (0020,0037) is missing; cannot order slices", ref_file)
        iop = np.array([1.0, 0, 0, 0, 1.0, 0])
    if abs(np.linalg.norm(iop[:3]) - 1) > 0.01 or abs(np.linalg.norm(iop[3:]) - 1) > 0.01 or abs(iop[:3] @ iop[3:]) > 0.01:
        raise InputError(f"ImageOrientationPatient is not two orthogonal unit vectors, got {_fmt(iop)}", ref_file)
    if ps is None:
        ps = np.array([1.0, 1.0])
    if np.any(ps <= 0):
        raise InputError(f"PixelSpacing must be positive, got {_fmt(ps)}", ref_file)
    positions = np.zeros((len(headers), 3))
    ref_shape = {kw: int_value(ref, kw, ref_file, 0) for kw in ("Rows", "Columns")}
    for i, (ds, f) in enumerate(zip(headers, files)):
        for kw, want in ref_shape.items():
            if int_value(ds, kw, f, 0) != want:
                raise InputError(f"{kw} is {ds.get(kw)} but the series' first slice has {want} (inconsistent geometry)", f)
        o = _floats(ds, "ImageOrientationPatient", 6, f)
        if o is not None and np.max(np.abs(o - iop)) > 1e-3:
            raise InputError(f"ImageOrientationPatient {_fmt(o)} differs from the series' {_fmt(iop)} (inconsistent geometry)", f)
        p = _floats(ds, "PixelSpacing", 2, f)
        if p is not None and np.max(np.abs(p - ps)) > 1e-3:
            raise InputError(f"PixelSpacing {_fmt(p)} differs from the series' {_fmt(ps)} (inconsistent geometry)", f)
        pos = _floats(ds, "ImagePositionPatient", 3, f)
        if pos is None:
            if len(headers) > 1:
                raise InputError("ImagePositionPatient (0020,0032) is missing; cannot order slices", f)
            pos = np.zeros(3)
        positions[i] = pos
    return iop, ps, positions


def _single_slice_thickness(ds: Dataset) -> float:
    """SliceThickness (mm) of a lone slice, 1 mm when absent, unreadable or not positive."""
    t = optional_float(ds, "SliceThickness")
    return t if t is not None and t > 0 else 1.0


def _assemble(s: SeriesSummary, label: str, zipped: bool = False) -> Volume:
    headers, files = s.headers, s.files
    ref = headers[0]
    if int_value(ref, "NumberOfFrames", files[0], 1) > 1:
        raise InputError("multi-frame (enhanced) DICOM is not supported; export the series as single-frame files", files[0])
    rows, cols = int_value(ref, "Rows", files[0], 0), int_value(ref, "Columns", files[0], 0)
    if not (0 < rows <= 4096 and 0 < cols <= 4096):
        raise InputError(f"Rows x Columns {rows}x{cols} is outside 1..4096", files[0])
    if len(headers) > MAX_SLICES or len(headers) * rows * cols * 4 > MAX_VOLUME_BYTES:
        raise InputError(f"series of {len(headers)} slices of {rows}x{cols} is too large to read", label)
    iop, ps, positions = _geometry(headers, files)
    normal = _normal(iop)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    warn: list[str] = []
    keep = [int(order[0])]
    dropped: list[str] = []
    for i in order[1:]:
        if abs(along[i] - along[keep[-1]]) < POSITION_TOL_MM:
            dropped.append(files[i].name)
            continue
        keep.append(int(i))
    if dropped:
        warn.append(f"{len(dropped)} slice(s) at duplicate positions dropped: {', '.join(dropped[:5])}")
    steps = np.diff(along[keep])
    dz = float(np.median(steps)) if len(keep) > 1 else _single_slice_thickness(ref)
    step_vec = np.median(np.diff(positions[keep], axis=0), axis=0) if len(keep) > 1 else normal * dz
    gaps = [{"after_slice": int(k), "step_mm": round(float(st), 4)} for k, st in enumerate(steps) if st > GAP_FACTOR * dz]
    if gaps:
        warn.append(f"{len(gaps)} gap(s) in slice positions (median spacing {dz:.3f} mm): " +
                    ", ".join(f"{g['step_mm']} mm after slice {g['after_slice']}" for g in gaps[:5]))
    if len(steps) and np.ptp(steps) > 0.1 * dz and not gaps:
        warn.append(f"slice spacing varies from {steps.min():.3f} to {steps.max():.3f} mm")
    hu = np.empty((len(keep), rows, cols), dtype=np.float32)

    def decode(z: int) -> int:
        i = keep[z]
        fixed = slice_to_hu(headers[i], files[i], hu[z])
        headers[i] = None  # type: ignore[call-overload]  # drop the decoded pixels: peak memory ~ one volume
        return fixed

    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:  # decoders release the GIL
        corrections = sum(pool.map(decode, range(len(keep))))
    if corrections:
        warn.append(f"RSNA 12-bit intercept defect corrected on {corrections} slice(s)")
    affine = affine_from_geometry(positions[keep[0]], iop[:3], iop[3:], step_vec, row_spacing=ps[0], col_spacing=ps[1])
    vol = Volume(hu=hu, spacing=(dz, float(ps[0]), float(ps[1])), affine=affine,
                 patient_id=str(ref.get("PatientID", "") or ""), study_uid=str(ref.get("StudyInstanceUID", "") or ""),
                 series_uid=s.series_uid if not s.series_uid.startswith("(") else "",
                 source=[str(files[i]) if not zipped else files[i].name for i in keep])
    vol.info.update({
        "format": "dicom", "series_description": s.description, "modality": s.modality,
        "transfer_syntax": str(getattr(ref.file_meta, "TransferSyntaxUID", "")) if hasattr(ref, "file_meta") else "",
        "gantry_tilt_tag_deg": optional_float(ref, "GantryDetectorTilt"),
        "slice_spacing_mm": round(dz, 4), "slice_thickness_mm": optional_float(ref, "SliceThickness") or None,
        "gaps": gaps, "duplicates_dropped": len(dropped), "warnings": warn,
    })
    return vol
