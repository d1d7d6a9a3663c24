"""Thin series -> slabs of the slice thickness a model was trained on.

A model trained on 5 mm scans sees about 30 slices per head; a 0.625 mm series of the same head
has 240. `slab_size` says how many consecutive source slices make one slab of the training
thickness (k = round(training / series spacing), at least 1), and `slab_max` merges them by their
maximum HU, as the 2x2x2 filter does (a bleed is bright, so a small one survives where an average
would dilute it). `prepare_volume` applies it first when `PrepSpec.slab_mm` is set, and
`slice_map` composes its groups with the z maximum filter's, so a prepared slice still names the
source slices it covers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ichdet.io.volume import Volume
from ichdet.preprocess.downsample import _block_max
from ichdet.preprocess.windows import ArrayT

UNKNOWN_GEOMETRY = "unknown_geometry"  # Volume.info key: the spacing is a placeholder (a bare HU array)
THICKER_WARNING_RATIO = 1.5  # a series this many times thicker than training gets a warning


def series_spacing(volume: Volume) -> float | None:
    """The distance between slice planes (mm) of a volume with several slices and a real geometry;
    None for one slice, a PNG/JPEG image or a bare array (no z spacing to speak of)."""
    if volume.shape[0] < 2 or volume.info.get("units") == "display" or volume.info.get(UNKNOWN_GEOMETRY):
        return None
    return float(volume.spacing[0])


def slab_size(spacing_mm: float | None, target_mm: float | None) -> int:
    """Source slices per slab: round(target / spacing) (halves round up), at least 1; 1 when
    either is unknown (None)."""
    if spacing_mm is None or target_mm is None:
        return 1
    return max(1, math.floor(float(target_mm) / float(spacing_mm) + 0.5))


def slab_max(hu: ArrayT, k: int) -> ArrayT:
    """(Z, ...) -> (ceil(Z / k), ...): the maximum of each run of k consecutive slices (the last
    run possibly shorter); unchanged for k == 1."""
    return _block_max(hu, k, (-hu.ndim,)) if k > 1 else hu


@dataclass(frozen=True)
class SlabPlan:
    """How one series is reformatted for a model trained on `target_mm` slices."""

    target_mm: float  # the training slice thickness
    series_mm: float  # the series' distance between slice planes
    per_slab: int  # source slices per slab (1: no reformat)
    n_slices: int  # source slices
    n_slabs: int  # slabs (= n_slices when per_slab is 1)

    @property
    def slab_mm(self) -> float:
        """The extent of one (full) slab: per_slab x series spacing."""
        return self.per_slab * self.series_mm

    @property
    def thicker(self) -> bool:
        """The series is thicker than training by more than `THICKER_WARNING_RATIO`."""
        return self.series_mm > THICKER_WARNING_RATIO * self.target_mm

    def summary(self) -> str:
        if self.per_slab > 1:
            return (f"slices reformatted from {self.n_slices} x {self.series_mm:.3g} mm to {self.n_slabs} slabs of "
                    f"{self.slab_mm:.3g} mm ({self.per_slab} slices each, maximum HU; model trained on "
                    f"{self.target_mm:g} mm)")
        return f"{self.n_slices} slices of {self.series_mm:.3g} mm kept as they are (model trained on {self.target_mm:g} mm)"

    def warning(self) -> str | None:
        """A line for the reader when the series is much thicker than training, else None."""
        if not self.thicker:
            return None
        return (f"slices are {self.series_mm:.3g} mm apart, thicker than the {self.target_mm:g} mm the model was "
                "trained on: it sees fewer slices than in training")

    def to_dict(self) -> dict[str, Any]:
        return {"training_mm": self.target_mm, "series_mm": round(self.series_mm, 4), "slices_per_slab": self.per_slab,
                "slab_mm": round(self.slab_mm, 4), "n_slices": self.n_slices, "n_slabs": self.n_slabs,
                "summary": self.summary()}


def slab_plan(volume: Volume, target_mm: float | None) -> SlabPlan | None:
    """The reformat of `volume` for a model trained on `target_mm` slices; None when there is no
    training thickness (an older bundle, a 2D model) or no z spacing (`series_spacing`)."""
    spacing = series_spacing(volume)
    if target_mm is None or spacing is None:
        return None
    k = slab_size(spacing, target_mm)
    n = volume.shape[0]
    return SlabPlan(float(target_mm), spacing, k, n, -(-n // k))
