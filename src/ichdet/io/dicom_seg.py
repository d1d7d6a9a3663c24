"""Write a haemorrhage label mask as a DICOM Segmentation that references its source CT series.

One BINARY segment per subtype (all five always described, present or not): category SCT 49755003
"Morphologically Abnormal Structure", type SCT 50960005 "Hemorrhage", anatomic region SCT 1101003
"Cranial Cavity"; the subtype is the segment label and the tracking id ("subdural haemorrhage").
Frame k of the mask is the source file k, so every stored frame carries that file's SOP Instance UID
(Derivation Image Sequence) and its ImagePositionPatient, also on a tilted series. Only frames
where a segment is present are stored.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ichdet.errors import InputError, InputWarning
from ichdet.fileio import atomic_path
from ichdet.io.dicom_derived import (CATEGORY, CRANIAL_CAVITY, HEMORRHAGE, MANUFACTURER, SUBTYPE_NAMES,
                                     algorithm_identification, check_name, quiet_highdicom,
                                     read_source_headers, software_versions)

SEG_SERIES_NUMBER = 901  # a number PACS lists after the CT's own series
SEG_DESCRIPTION = "ichdet haemorrhage segmentation"
# recommended display colours (sRGB) per segment, in SUBTYPE_NAMES order (RecommendedDisplayCIELabValue)
SUBTYPE_RGB = ((255, 64, 64), (255, 160, 0), (64, 160, 255), (80, 220, 80), (200, 80, 255))


def _segment_descriptions(labels: Sequence[str], algorithm: hd.AlgorithmIdentificationSequence) -> list[hd.seg.SegmentDescription]:
    out = []
    for i, label in enumerate(labels):
        rgb = SUBTYPE_RGB[i % len(SUBTYPE_RGB)]
        out.append(hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=label,
            segmented_property_category=CATEGORY,
            segmented_property_type=HEMORRHAGE,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=f"{label} haemorrhage",
            tracking_uid=hd.UID(),
            anatomic_regions=[CRANIAL_CAVITY],
            display_color=hd.color.CIELabColor.from_rgb(*rgb),
        ))
    return out


def frame_of_reference_for(series_uid: str) -> str:
    """The Frame of Reference UID given to a series that has none (the same for every run)."""
    return generate_uid(entropy_srcs=["ichdet-frame-of-reference", series_uid])


def _ensure_frame_of_reference(headers: list[Dataset], source_files: Sequence[str | Path]) -> None:
    """A SEG of a CT needs the CT's FrameOfReferenceUID; anonymised series (CQ500) lack it. Then every
    header gets `frame_of_reference_for(series)`, with a warning, so the SEG still carries one."""
    uids = {str(ds.get("FrameOfReferenceUID", "") or "") for ds in headers}
    if uids == {""}:
        uid = frame_of_reference_for(str(headers[0].SeriesInstanceUID))
        warnings.warn(f"{source_files[0]}: the series has no FrameOfReferenceUID; the SEG uses {uid}, "
                      "derived from its SeriesInstanceUID", InputWarning, stacklevel=3)
        for ds in headers:
            ds.FrameOfReferenceUID = uid
            ds.PositionReferenceIndicator = ""
    elif len(uids) > 1:
        found = ", ".join(sorted(u or "(none)" for u in uids))
        raise InputError(f"source files hold {len(uids)} FrameOfReferenceUIDs ({found}); expected one", source_files[0])


def check_mask(mask: np.ndarray, source_files: Sequence[str | Path], rows: int, columns: int, n_labels: int) -> np.ndarray:
    """`mask` as uint8 (Z, H, W) after checking it against the series (Z files of `rows` x `columns`)."""
    arr = np.asarray(mask)
    want = (len(source_files), rows, columns)
    if arr.ndim != 3 or tuple(arr.shape) != want:
        raise InputError(f"mask shape {tuple(arr.shape)} does not match the series' {want} "
                         f"({len(source_files)} files of {rows}x{columns})", source_files[0])
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"mask must hold integer labels 0..{n_labels}, got dtype {arr.dtype}")
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo < 0 or hi > n_labels:
        raise InputError(f"mask labels must be in 0..{n_labels}, got {lo}..{hi}")
    return arr.astype(np.uint8, copy=False)


def write_dicom_seg(
    mask: np.ndarray,
    source_files: Sequence[str | Path],
    out: str | Path,
    *,
    algorithm_name: str,
    algorithm_version: str,
    series_number: int = SEG_SERIES_NUMBER,
    segment_labels: Sequence[str] = SUBTYPE_NAMES,
) -> Path:
    """Write `mask` as a DICOM Segmentation (BINARY) of `source_files` to `out`, atomically.

    Args:
        mask: uint8 (Z, H, W) labels, 0 = no bleed, i + 1 = ``segment_labels[i]``; ``mask[k]`` is the
            slice of ``source_files[k]`` (``Volume.source`` order, inferior to superior).
        source_files: the series' single-frame DICOM files (headers are read, pixels are not).
        algorithm_name, algorithm_version: the model, in the Segment Algorithm Identification.
        series_number: SeriesNumber of the new SEG series.
        segment_labels: one label per segment number (default: the five subtypes).
    Returns:
        `out` as a Path.
    """
    name = check_name(algorithm_name, "algorithm_name")
    version = check_name(algorithm_version, "algorithm_version")
    labels = [check_name(s, "segment label") for s in segment_labels]
    if not labels:
        raise InputError("segment_labels must name at least one segment")
    headers = read_source_headers(source_files)
    for ds, f in zip(headers, source_files):
        if not ds.get("Rows") or not ds.get("Columns"):
            raise InputError("Rows/Columns missing: not an image a segmentation can reference", f)
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError("multi-frame source images are not supported; give the single-frame series", f)
        if (int(ds.Rows), int(ds.Columns)) != (int(headers[0].Rows), int(headers[0].Columns)):
            raise InputError(f"Rows x Columns {ds.Rows}x{ds.Columns} differs from the first file's "
                             f"{headers[0].Rows}x{headers[0].Columns}", f)
    labelmap = check_mask(mask, source_files, int(headers[0].Rows), int(headers[0].Columns), len(labels))
    _ensure_frame_of_reference(headers, source_files)
    algorithm = algorithm_identification(name, version)
    with quiet_highdicom():
        seg = hd.seg.Segmentation(
            source_images=headers,
            pixel_array=labelmap,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_segment_descriptions(labels, algorithm),
            series_instance_uid=hd.UID(),
            series_number=int(series_number),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=name,
            software_versions=software_versions(),
            device_serial_number=version,
            content_description=SEG_DESCRIPTION[:64],
            content_creator_name=MANUFACTURER,
            content_label="ICH",
            series_description=SEG_DESCRIPTION,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            omit_empty_frames=bool(labelmap.any()),
        )
    out = Path(out)
    with atomic_path(out) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return out
