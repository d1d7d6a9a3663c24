"""Write ichdet's measurements of one CT series as a DICOM Structured Report (TID 1500).

A Comprehensive 3D SR "Imaging Measurement Report" (DCM 126000) for the procedure LN 24725-4
"Head CT", observed by a device (the model: name, version, manufacturer ichdet). It holds

- one group per subtype: SCT 118565006 "Volume" in UCUM "ml" of the finding SCT 50960005
  "Hemorrhage", tracked as ``"<subtype> haemorrhage"``; a Volumetric ROI group (TID 1411) that
  references the subtype's segment when the SEG is given, else a Measurement Group (TID 1501);
- one group "intracranial haemorrhage" (TID 1501, finding SCT 1386000): the total volume (ml), the
  probability (DCM 122157, UCUM "1"), and, with a threshold, the threshold (DCM 122411, "1") and
  the decision as a qualitative evaluation (SCT 52101004 Present / SCT 272519000 Absent).

Every measurement carries the Algorithm Identification (TID 4019: model name and version). The
source series (and the SEG) are listed as evidence, so the SR belongs to the source study.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage, generate_uid

from ichdet.errors import InputError
from ichdet.fileio import atomic_path
from ichdet.io.dicom_derived import (CATEGORY, CRANIAL_CAVITY, HEMORRHAGE, INTRACRANIAL_HEMORRHAGE, MANUFACTURER,
                                     MILLILITRE, NO_UNITS, PROBABILITY, SUBTYPE_NAMES, THRESHOLD, VOLUME, check_name,
                                     quiet_highdicom, read_source_headers, software_versions)

SR_SERIES_NUMBER = 902  # after the SEG's 901
SR_DESCRIPTION = "ichdet haemorrhage measurements"
TOTAL_KEY = "total"
SUMMARY_TRACKING_ID = "intracranial haemorrhage"


def _check_values(volumes_ml: dict[str, float], probability: float, threshold: float | None) -> dict[str, float]:
    """The volumes in SUBTYPE_NAMES order plus "total" (the sum when not given), all checked."""
    unknown = sorted(set(volumes_ml) - set(SUBTYPE_NAMES) - {TOTAL_KEY})
    if unknown:
        raise InputError(f"volumes_ml has unknown key(s) {', '.join(unknown)}; "
                         f"expected {', '.join(SUBTYPE_NAMES)} or {TOTAL_KEY}")
    out: dict[str, float] = {}
    for key in (*SUBTYPE_NAMES, TOTAL_KEY):
        if key in volumes_ml:
            v = float(volumes_ml[key])
            if not math.isfinite(v) or v < 0:
                raise InputError(f"volumes_ml[{key!r}] must be a finite volume >= 0 mL, got {volumes_ml[key]!r}")
            out[key] = v
    if TOTAL_KEY not in out:
        out[TOTAL_KEY] = sum(out.values())
    for what, p in (("probability", probability), ("threshold", threshold)):
        if p is not None and not (math.isfinite(float(p)) and 0.0 <= float(p) <= 1.0):
            raise InputError(f"{what} must be in [0, 1], got {p!r}")
    return out


def _read_seg(seg_path: str | Path, study_uid: str) -> Dataset:
    try:
        seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    except FileNotFoundError:
        raise InputError("segmentation file not found", seg_path) from None
    except (InvalidDicomError, OSError) as e:
        raise InputError(f"cannot read the segmentation ({e.__class__.__name__}: {e})", seg_path) from None
    if seg.get("SOPClassUID") != SegmentationStorage:
        raise InputError(f"SOPClassUID {seg.get('SOPClassUID')} is not Segmentation Storage", seg_path)
    if seg.get("StudyInstanceUID") != study_uid:
        raise InputError(f"StudyInstanceUID {seg.get('StudyInstanceUID')} differs from the source series' {study_uid}", seg_path)
    return seg


def _referenced_segment(seg: Dataset, label: str, series_uid: str, seg_path: str | Path) -> hd.sr.ReferencedSegment:
    """The SEG's segment labelled `label`, with the source images of its frames (or the series when it has none)."""
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence if str(s.SegmentLabel) == label]
    if len(numbers) != 1:
        raise InputError(f"{len(numbers)} segments are labelled {label!r}; expected exactly one", seg_path)
    number = numbers[0]
    has_frames = any(int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == number
                     for f in seg.get("PerFrameFunctionalGroupsSequence", []))
    if has_frames and int(seg.get("NumberOfFrames", 0)) > 0:
        return hd.sr.ReferencedSegment.from_segmentation(seg, segment_number=number)
    return hd.sr.ReferencedSegment(sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                                   segment_number=number,
                                   source_series=hd.sr.SourceSeriesForSegmentation(series_uid))


def _subtype_group(subtype: str, volume: float, algo: hd.sr.AlgorithmIdentification,
                   segment: hd.sr.ReferencedSegment | None):
    tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{subtype} haemorrhage")
    measurement = hd.sr.Measurement(name=VOLUME, value=volume, unit=MILLILITRE, algorithm_id=algo)
    common = dict(tracking_identifier=tracking, finding_type=HEMORRHAGE, finding_category=CATEGORY,
                  finding_sites=[hd.sr.FindingSite(CRANIAL_CAVITY)], algorithm_id=algo, measurements=[measurement])
    if segment is not None:
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=segment, **common)
    return hd.sr.MeasurementsAndQualitativeEvaluations(**common)


def _summary_group(total: float, probability: float, threshold: float | None,
                   algo: hd.sr.AlgorithmIdentification) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    measurements = [hd.sr.Measurement(name=VOLUME, value=total, unit=MILLILITRE, algorithm_id=algo),
                    hd.sr.Measurement(name=PROBABILITY, value=float(probability), unit=NO_UNITS, algorithm_id=algo)]
    evaluations = []
    if threshold is not None:
        measurements.append(hd.sr.Measurement(name=THRESHOLD, value=float(threshold), unit=NO_UNITS, algorithm_id=algo))
        decision = codes.SCT.Present if float(probability) >= float(threshold) else codes.SCT.Absent
        evaluations.append(hd.sr.QualitativeEvaluation(name=INTRACRANIAL_HEMORRHAGE, value=decision))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=SUMMARY_TRACKING_ID),
        finding_type=INTRACRANIAL_HEMORRHAGE, finding_sites=[hd.sr.FindingSite(CRANIAL_CAVITY)],
        algorithm_id=algo, measurements=measurements, qualitative_evaluations=evaluations or None)


def write_dicom_sr(
    source_files: Sequence[str | Path],
    out: str | Path,
    *,
    volumes_ml: dict[str, float],
    probability: float,
    threshold: float | None,
    model_name: str,
    model_version: str,
    seg_path: str | Path | None = None,
    series_number: int = SR_SERIES_NUMBER,
) -> Path:
    """Write the measurement report of one series to `out` (atomically); returns `out` as a Path.

    Args:
        source_files: the CT series the measurements come from (headers are read).
        volumes_ml: mL per subtype (keys from SUBTYPES, any subset) and optionally "total"
            (default: the sum of the subtypes given).
        probability: the model's probability of haemorrhage, in [0, 1].
        threshold: the operating point the decision uses, or None (then no decision is written).
        model_name, model_version: the algorithm identification.
        seg_path: the DICOM SEG written for the same series; each subtype's volume then references
            the segment whose label is that subtype.
    """
    name = check_name(model_name, "model_name")
    version = check_name(model_version, "model_version")
    values = _check_values(volumes_ml, probability, threshold)
    headers = read_source_headers(source_files)
    ref = headers[0]
    seg = _read_seg(seg_path, str(ref.StudyInstanceUID)) if seg_path is not None else None
    algo = hd.sr.AlgorithmIdentification(name=name, version=version)
    groups = [_subtype_group(s, values[s], algo,
                             _referenced_segment(seg, s, str(ref.SeriesInstanceUID), seg_path) if seg is not None else None)
              for s in SUBTYPE_NAMES if s in values]
    groups.append(_summary_group(values[TOTAL_KEY], probability, threshold, algo))
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[MANUFACTURER, name, version]), name=name,
        manufacturer_name=MANUFACTURER, model_name=f"{name} {version}"[:64])
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.LN.HeadCT,
                                     imaging_measurements=groups)
    with quiet_highdicom():
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*headers, *([seg] if seg is not None else [])],
            content=report[0],
            series_instance_uid=hd.UID(),
            series_number=int(series_number),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            series_description=SR_DESCRIPTION,
            manufacturer_model_name=name,
            software_versions=software_versions(),
        )
    out = Path(out)
    with atomic_path(out) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    return out
