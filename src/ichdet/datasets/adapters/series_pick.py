"""Pick the plain axial series of a study from DICOM headers alone.

The rule (CQ500 studies mix thin, thick, bone-kernel, contrast and tilted series):

1. Group files by SeriesInstanceUID.
2. Candidates are series that are
   - CT (Modality CT, or no Modality given),
   - not localizers/scouts (ImageType LOCALIZER, or SeriesDescription with scout, topogram,
     localizer, surview, scanogram),
   - not bone/sharp reconstructions (ConvolutionKernel with BONE/EDGE/LUNG/SHARP, e.g. BONE,
     BONEPLUS, or a sharp Siemens/Toshiba/Philips kernel such as H60s, H70h, Hr64, B70f, FC30, D, E,
     YC; or "bone" in SeriesDescription),
   - axial: slice normal (cross product of the ImageOrientationPatient rows) within
     `max_tilt_deg` (30) of the patient z axis, so gantry-tilted series stay in,
   - at least `min_slices` (10) slices.
3. Among candidates prefer, in order: any series not described as contrast-enhanced over one that
   is (a non-contrast detector must not be handed a post-contrast scan while a plain one exists),
   then SliceThickness closest to `prefer_thickness` mm (5; when SliceThickness is absent, the
   median slice spacing stands in), then a plain / non-contrast description over a neutral one,
   then the most slices, then the smallest SeriesInstanceUID (so the choice is deterministic).
"""
from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ichdet.datasets.adapters.dicom_headers import DicomHeader, median_spacing, tilt_from_axial_deg

MAX_TILT_DEG = 30.0
MIN_SLICES = 10
PREFER_THICKNESS_MM = 5.0
_BONE_KERNEL = re.compile(r"BONE|EDGE|LUNG|SHARP|^[HJB]R?[6-9]\d|^FC[3-9]\d|^Y[C-F]$|^[DE]$", re.I)
_LOCALIZER = re.compile(r"scout|topogram|locali[sz]er|surview|scanogram", re.I)
_PLAIN = re.compile(r"plain|non[\s_-]*contrast|pre[\s_-]*contrast|without|w/o|\bnc\b|ncct|native", re.I)
_CONTRAST = re.compile(r"contrast|\bpost\b|c\+|cect|enhanced|angio|\bcta\b", re.I)


@dataclass
class SeriesInfo:
    """One series as the picking rule sees it."""

    uid: str
    headers: list[DicomHeader]
    modality: str
    description: str
    kernel: str
    image_type: str
    thickness: float | None  # mm: SliceThickness (most common value) or median slice spacing
    tilt_deg: float | None   # slice normal vs patient z; None without ImageOrientationPatient

    @property
    def n_slices(self) -> int:
        return len(self.headers)

    @property
    def folder(self) -> str:
        """Deepest folder holding all the series' files (for 'zip::member' sources, inside the zip)."""
        parents = [os.path.dirname(h.source) for h in self.headers]
        return os.path.commonpath(parents) if len(set(parents)) > 1 else parents[0]

    def contrast_rank(self) -> int:
        """0 plain / non-contrast, 1 says nothing, 2 contrast."""
        if _PLAIN.search(self.description):
            return 0
        return 2 if _CONTRAST.search(self.description) else 1


def summarise_series(headers: list[DicomHeader]) -> list[SeriesInfo]:
    """Group headers by SeriesInstanceUID into SeriesInfo, sorted by UID."""
    groups: dict[str, list[DicomHeader]] = {}
    for h in headers:
        groups.setdefault(h.series_uid, []).append(h)
    out = []
    for uid, hs in sorted(groups.items()):
        first = hs[0]
        thicknesses = Counter(round(h.thickness, 3) for h in hs if h.thickness)
        thickness = thicknesses.most_common(1)[0][0] if thicknesses else median_spacing(hs)
        tilt = None
        if first.orientation is not None:
            try:
                tilt = tilt_from_axial_deg(first.orientation)
            except ValueError:
                tilt = None
        out.append(SeriesInfo(uid, hs, first.modality, first.description, first.kernel,
                              first.image_type, thickness, tilt))
    return out


def reject_reason(s: SeriesInfo, min_slices: int = MIN_SLICES, max_tilt_deg: float = MAX_TILT_DEG) -> str | None:
    """Why a series is not a candidate, or None when it is."""
    if s.modality and s.modality != "CT":
        return f"modality {s.modality}"
    if "LOCALIZER" in s.image_type or _LOCALIZER.search(s.description):
        return "localizer"
    if _BONE_KERNEL.search(s.kernel.strip()) or "bone" in s.description.lower():
        return f"bone reconstruction (kernel {s.kernel!r}, description {s.description!r})"
    if s.tilt_deg is None:
        return "no ImageOrientationPatient"
    if s.tilt_deg > max_tilt_deg:
        return f"not axial (normal {s.tilt_deg:.0f} deg from z)"
    if s.n_slices < min_slices:
        return f"{s.n_slices} slice(s) < {min_slices}"
    return None


def rank_key(s: SeriesInfo, prefer_thickness: float = PREFER_THICKNESS_MM) -> tuple:
    """Sort key: smaller is better (see the module docstring)."""
    dist = round(abs(s.thickness - prefer_thickness), 2) if s.thickness else math.inf
    return (s.contrast_rank() == 2, dist, s.contrast_rank(), -s.n_slices, s.uid)


def pick_series(headers: list[DicomHeader], prefer_thickness: float = PREFER_THICKNESS_MM,
                min_slices: int = MIN_SLICES, max_tilt_deg: float = MAX_TILT_DEG,
                ) -> tuple[SeriesInfo | None, dict[str, str]]:
    """Apply the rule: (chosen series or None, {uid: reason} for every series left out)."""
    series = summarise_series(headers)
    reasons = {s.uid: r for s in series if (r := reject_reason(s, min_slices, max_tilt_deg))}
    candidates = [s for s in series if s.uid not in reasons]
    if not candidates:
        return None, reasons
    best = min(candidates, key=lambda s: rank_key(s, prefer_thickness))
    for s in candidates:
        if s is not best:
            reasons[s.uid] = f"ranked below {best.uid}"
    return best, reasons


def is_dicom_name(path: Path) -> bool:
    """File names a DICOM export uses: *.dcm, *.dicom, *.ima or no extension."""
    return path.suffix.lower() in (".dcm", ".dicom", ".ima", "") and not path.name.startswith(".")
