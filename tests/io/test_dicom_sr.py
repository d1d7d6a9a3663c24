"""DICOM Structured Report (TID 1500) output: volumes, probability and algorithm read back with
pydicom and highdicom, the source study and SEG referenced, validated with dciodvfy."""
from __future__ import annotations

import warnings

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from ichdet.errors import InputError
from ichdet.io import read_dicom_series, write_dicom_series
from ichdet.io.dicom_seg import write_dicom_seg
from ichdet.io.dicom_sr import write_dicom_sr

from ctfactory import head_like_volume
from dicom_validate import dciodvfy

SUBTYPES = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
VOLUMES = {"epidural": 0.0, "intraparenchymal": 12.5, "intraventricular": 1.2345678, "subarachnoid": 3.25,
           "subdural": 0.0}
MODEL = dict(model_name="ichdet-unet2d", model_version="0.1.0+test")


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """(Volume, SEG path): a small tilted series and a SEG with three of the five subtypes present."""
    root = tmp_path_factory.mktemp("sr")
    vol0 = head_like_volume(z=6, size=32, tilt_deg=5.0)
    vol0.patient_id = "SR01"
    write_dicom_series(vol0, root / "series")
    vol = read_dicom_series(root / "series")
    mask = np.zeros(vol.shape, np.uint8)
    mask[2, 10:16, 10:16] = 2
    mask[3, 12:14, 4:8] = 3
    mask[4, 20:24, 20:24] = 4
    seg = write_dicom_seg(mask, vol.source, root / "seg.dcm", algorithm_name="ichdet-unet2d", algorithm_version="0.1.0+test")
    return vol, seg


def _items(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _code(item, attr="ConceptNameCodeSequence") -> tuple[str, str]:
    c = getattr(item, attr)[0]
    return str(c.CodeValue), str(c.CodingSchemeDesignator)


def _groups(ds) -> dict[str, dict]:
    """{tracking identifier: {"num": {(code, scheme): (value, unit code)}, "codes": [...], "text": {...}}} per measurement group."""
    out = {}
    for group in (i for i in _items(ds) if i.ValueType == "CONTAINER" and _code(i) == ("125007", "DCM")):
        found = {"num": {}, "code": {}, "text": {}, "image": []}
        for item in _items(group):
            if item.ValueType == "NUM":
                mv = item.MeasuredValueSequence[0]
                found["num"][_code(item)] = (float(mv.NumericValue), _code(mv, "MeasurementUnitsCodeSequence"))
            elif item.ValueType == "TEXT":
                found["text"][_code(item)] = str(item.TextValue)
            elif item.ValueType == "CODE":
                found["code"][_code(item)] = _code(item, "ConceptCodeSequence")
            elif item.ValueType == "IMAGE":
                found["image"].append(item.ReferencedSOPSequence[0])
        out[found["text"][("112039", "DCM")]] = found
    return out


VOLUME = ("118565006", "SCT")
ML = ("ml", "UCUM")


def test_sr_with_seg_reads_back(series, tmp_path):
    vol, seg_path = series
    out = write_dicom_sr(vol.source, tmp_path / "sr.dcm", volumes_ml=VOLUMES, probability=0.875, threshold=0.5,
                         seg_path=seg_path, **MODEL)
    assert out == tmp_path / "sr.dcm" and [p.name for p in tmp_path.iterdir()] == ["sr.dcm"]
    ds = pydicom.dcmread(out)
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    assert ds.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage and ds.Modality == "SR"
    assert ds.StudyInstanceUID == vol.study_uid and ds.PatientID == "SR01"
    assert ds.Manufacturer == "ichdet" and ds.CompletionFlag == "COMPLETE"
    assert _code(ds) == ("126000", "DCM")  # Imaging Measurement Report
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    evidence = ds.CurrentRequestedProcedureEvidenceSequence
    assert [e.StudyInstanceUID for e in evidence] == [vol.study_uid]
    referenced = {str(i.ReferencedSOPInstanceUID) for s in evidence[0].ReferencedSeriesSequence for i in s.ReferencedSOPSequence}
    sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in vol.source}
    assert referenced == sources | {str(seg.SOPInstanceUID)}

    groups = _groups(ds)
    assert sorted(groups) == sorted([f"{s} haemorrhage" for s in SUBTYPES] + ["intracranial haemorrhage"])
    for number, s in enumerate(SUBTYPES, start=1):
        g = groups[f"{s} haemorrhage"]
        assert g["num"][VOLUME][0] == pytest.approx(VOLUMES[s], rel=1e-6) and g["num"][VOLUME][1] == ML
        assert g["code"][("121071", "DCM")] == ("50960005", "SCT")  # Finding: Hemorrhage
        assert g["text"][("111001", "DCM")] == "ichdet-unet2d" and g["text"][("111003", "DCM")] == "0.1.0+test"
        [segment] = [r for r in g["image"] if "ReferencedSegmentNumber" in r]
        assert (segment.ReferencedSOPInstanceUID, int(segment.ReferencedSegmentNumber)) == (seg.SOPInstanceUID, number)
        assert seg.SegmentSequence[number - 1].SegmentLabel == s
    summary = groups["intracranial haemorrhage"]
    assert summary["num"][VOLUME] == (pytest.approx(12.5 + 1.2345678 + 3.25, rel=1e-6), ML)
    assert summary["num"][("122157", "DCM")] == (0.875, ("1", "UCUM"))  # Probability
    assert summary["num"][("122411", "DCM")] == (0.5, ("1", "UCUM"))  # Threshold Value
    assert summary["code"][("1386000", "SCT")] == ("52101004", "SCT")  # Intracranial hemorrhage: Present
    observer = {_code(i): str(i.TextValue) for i in _items(ds) if i.ValueType == "TEXT"}
    assert observer[("121013", "DCM")] == "ichdet-unet2d"  # Device Observer Name
    assert observer[("121014", "DCM")] == "ichdet"  # Device Observer Manufacturer

    # highdicom's reading of the same report
    sr = hd.sr.srread(out)
    report = hd.sr.MeasurementReport.from_sequence(sr.content)
    rois = report.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in rois] == [f"{s} haemorrhage" for s in SUBTYPES]
    assert [g.get_measurements(name=codes.SCT.Volume)[0].value for g in rois] == pytest.approx(list(VOLUMES.values()))
    assert all(g.get_measurements()[0].unit == hd.sr.CodedConcept("ml", "UCUM", "milliliter") for g in rois)
    assert [g.referenced_segment.referenced_segment_numbers for g in rois] == [[1], [2], [3], [4], [5]]
    assert {g.referenced_segment.referenced_sop_instance_uid for g in rois} == {seg.SOPInstanceUID}
    [image_group] = report.get_image_measurement_groups()
    assert image_group.get_measurements(name=codes.DCM.Probability)[0].value == 0.875
    assert image_group.get_measurements(name=codes.DCM.Probability)[0].unit == codes.UCUM.NoUnits
    errors, _ = dciodvfy(out)
    assert errors == []


def test_sr_without_seg_or_threshold(series, tmp_path):
    vol, _ = series
    out = write_dicom_sr(vol.source, tmp_path / "sr.dcm", volumes_ml={"subdural": 31.0, "subarachnoid": 2.0},
                         probability=0.25, threshold=None, **MODEL)
    ds = pydicom.dcmread(out)
    groups = _groups(ds)
    assert sorted(groups) == ["intracranial haemorrhage", "subarachnoid haemorrhage", "subdural haemorrhage"]
    assert groups["subdural haemorrhage"]["num"][VOLUME] == (31.0, ML)
    assert groups["subdural haemorrhage"]["image"] == []  # no SEG to reference
    summary = groups["intracranial haemorrhage"]
    assert summary["num"] == {VOLUME: (33.0, ML), ("122157", "DCM"): (0.25, ("1", "UCUM"))}
    assert ("1386000", "SCT") not in summary["code"]  # no threshold, no decision
    report = hd.sr.MeasurementReport.from_sequence(hd.sr.srread(out).content)
    assert report.get_volumetric_roi_measurement_groups() == []
    assert len(report.get_image_measurement_groups()) == 3
    errors, _ = dciodvfy(out)
    assert errors == []


def test_given_total_and_absent_decision(series, tmp_path):
    vol, _ = series
    out = write_dicom_sr(vol.source, tmp_path / "sr.dcm", volumes_ml={"total": 4.0}, probability=0.1, threshold=0.3, **MODEL)
    summary = _groups(pydicom.dcmread(out))["intracranial haemorrhage"]
    assert summary["num"][VOLUME] == (4.0, ML)
    assert summary["code"][("1386000", "SCT")] == ("272519000", "SCT")  # Absent


def test_bad_values_are_refused(series, tmp_path):
    vol, _ = series
    out = tmp_path / "sr.dcm"
    with pytest.raises(InputError) as e:
        write_dicom_sr(vol.source, out, volumes_ml={"sdh": 1.0}, probability=0.5, threshold=0.5, **MODEL)
    assert str(e.value) == ("volumes_ml has unknown key(s) sdh; expected epidural, intraparenchymal, "
                            "intraventricular, subarachnoid, subdural or total")
    with pytest.raises(InputError) as e:
        write_dicom_sr(vol.source, out, volumes_ml={"subdural": -1.0}, probability=0.5, threshold=0.5, **MODEL)
    assert str(e.value) == "volumes_ml['subdural'] must be a finite volume >= 0 mL, got -1.0"
    with pytest.raises(InputError) as e:
        write_dicom_sr(vol.source, out, volumes_ml={}, probability=1.5, threshold=0.5, **MODEL)
    assert str(e.value) == "probability must be in [0, 1], got 1.5"
    with pytest.raises(InputError) as e:
        write_dicom_sr(vol.source, out, volumes_ml={}, probability=0.5, threshold=float("nan"), **MODEL)
    assert str(e.value) == "threshold must be in [0, 1], got nan"
    with pytest.raises(InputError) as e:
        write_dicom_sr(vol.source, out, volumes_ml={}, probability=0.5, threshold=None, model_name="", model_version="1")
    assert str(e.value) == "model_name must be 1..64 characters without a backslash, got ''"
    assert not out.exists()


def test_seg_of_another_study_is_refused(series, tmp_path):
    vol, _ = series
    other = head_like_volume(z=3, size=32)
    other.patient_id = "OTHER"
    other.series_uid = "1.2.826.0.1.3680043.8.498.999"
    files = write_dicom_series(other, tmp_path / "other")
    other_vol = read_dicom_series(tmp_path / "other")
    seg = write_dicom_seg(np.ones(other_vol.shape, np.uint8), [str(f) for f in files], tmp_path / "other_seg.dcm",
                          algorithm_name="x", algorithm_version="1")
    with pytest.raises(InputError) as e:
        write_dicom_sr(vol.source, tmp_path / "sr.dcm", volumes_ml={}, probability=0.5, threshold=None,
                       seg_path=seg, **MODEL)
    assert str(e.value) == (f"{seg}: StudyInstanceUID {other_vol.study_uid} differs from the source series' "
                            f"{vol.study_uid}")


def test_cq500_seg_and_sr_pass_dciodvfy(cq500_dir, tmp_path):
    """The real series: de-identified without DeidentificationMethod and without FrameOfReferenceUID."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vol = read_dicom_series(cq500_dir)
        mask = np.zeros(vol.shape, np.uint8)
        mask[150, 240:260, 300:330] = 2
        mask[151, 240:262, 300:332] = 2
        seg = write_dicom_seg(mask, vol.source, tmp_path / "seg.dcm", algorithm_name="m", algorithm_version="1")
    out = write_dicom_sr(vol.source, tmp_path / "sr.dcm", volumes_ml={"intraparenchymal": 0.27}, probability=0.99,
                         threshold=0.5, seg_path=seg, **MODEL)
    ds = pydicom.dcmread(out)
    assert ds.StudyInstanceUID == vol.study_uid and ds.PatientID == vol.patient_id != ""
    assert ds.DeidentificationMethod == "not recorded in the source images"
    assert len(ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence) == 2  # the CT and the SEG
    g = _groups(ds)["intraparenchymal haemorrhage"]
    assert g["num"][VOLUME] == (0.27, ML)
    assert [int(r.ReferencedSegmentNumber) for r in g["image"] if "ReferencedSegmentNumber" in r] == [2]
    for f in (seg, out):
        errors, _ = dciodvfy(f)
        assert errors == []
