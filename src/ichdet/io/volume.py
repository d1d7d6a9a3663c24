"""`Volume`: a CT scan in Hounsfield units with the geometry that travels with it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Volume:
    """A CT volume, axial slices ordered inferior to superior.

    Attributes:
        hu: float32 array ``(Z, H, W)`` in Hounsfield units; ``hu[k, r, c]``.
        spacing: ``(dz, dy, dx)`` in mm: distance between slice planes along the slice normal,
            row spacing (between rows), column spacing (between columns).
        affine: 4x4 float64 mapping voxel ``(c, r, k, 1)`` to patient LPS mm (DICOM frame).
            Column 2 is the actual step between slices, so a gantry tilt shows as shear.
        patient_id, study_uid, series_uid: identifiers from the source ("" when unknown).
        source: the files the volume was read from, in slice order.
        info: what the reader saw (gantry tilt, gaps, duplicates, other series, warnings...).
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    patient_id: str = ""
    study_uid: str = ""
    series_uid: str = ""
    source: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        hu = np.asarray(self.hu)
        if hu.ndim != 3:
            raise ValueError(f"Volume.hu must be (Z, H, W), got shape {hu.shape}")
        self.hu = hu.astype(np.float32, copy=False)
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        if len(self.spacing) != 3 or not all(np.isfinite(self.spacing)) or min(self.spacing) <= 0:
            raise ValueError(f"Volume.spacing must be three positive mm values, got {self.spacing}")
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume.affine must be 4x4, got shape {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def origin(self) -> np.ndarray:
        """LPS position (mm) of voxel (0, 0, 0): the first row/column of the most inferior slice."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3x3 unit column vectors (LPS) of the column, row and slice axes."""
        m = self.affine[:3, :3]
        return m / np.linalg.norm(m, axis=0, keepdims=True)

    @property
    def slice_normal(self) -> np.ndarray:
        """Unit normal of the slice planes (row direction x column direction), LPS."""
        d = self.direction
        n = np.cross(d[:, 0], d[:, 1])
        return n / np.linalg.norm(n)

    @property
    def gantry_tilt_deg(self) -> float:
        """Angle between the slice step and the slice normal (0 for an orthogonal grid)."""
        step = self.direction[:, 2]
        cos = float(np.clip(abs(step @ self.slice_normal), -1.0, 1.0))
        return float(np.degrees(np.arccos(cos)))

    def affine_ras(self) -> np.ndarray:
        """The affine in RAS (NIfTI/nibabel) convention."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary of shape, geometry, ids and HU range."""
        hu = self.hu
        return {
            "shape": list(self.shape),
            "spacing_mm": [round(s, 4) for s in self.spacing],
            "origin_lps_mm": [round(float(v), 3) for v in self.origin],
            "direction": [[round(float(v), 5) for v in row] for row in self.direction],
            "gantry_tilt_deg": round(self.gantry_tilt_deg, 3),
            "hu_min": float(hu.min()) if hu.size else None,
            "hu_max": float(hu.max()) if hu.size else None,
            "patient_id": self.patient_id,
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "n_files": len(self.source),
        }


def affine_from_geometry(
    origin: np.ndarray, col_dir: np.ndarray, row_dir: np.ndarray, slice_step: np.ndarray,
    row_spacing: float, col_spacing: float,
) -> np.ndarray:
    """Build the LPS voxel->mm affine from DICOM-style geometry.

    Args:
        origin: LPS position of voxel (0, 0, 0), shape (3,).
        col_dir: unit vector along increasing column index (IOP[0:3]).
        row_dir: unit vector along increasing row index (IOP[3:6]).
        slice_step: vector (mm) from one slice's origin to the next, shape (3,).
    """
    a = np.eye(4)
    a[:3, 0] = np.asarray(col_dir, float) * col_spacing
    a[:3, 1] = np.asarray(row_dir, float) * row_spacing
    a[:3, 2] = np.asarray(slice_step, float)
    a[:3, 3] = np.asarray(origin, float)
    return a
