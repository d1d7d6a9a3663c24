"""RSNA 2019 adapter on real-format fixtures: DICOM files named ID_<sop>.dcm + stage_2_train.csv."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from ichdet.datasets.adapters import ADAPTERS, prepare_rsna
from ichdet.datasets.manifest import read_manifest, read_slice_labels
from ichdet.errors import InputError

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
FLIPPED = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # normal (0, 0, -1): positions must still sort by z
TILT = math.radians(15)
TILTED = (1.0, 0.0, 0.0, 0.0, math.cos(TILT), -math.sin(TILT))


def write_ct(path: Path, sop: str, series: str, patient: str, position: tuple[float, float, float],
             orientation: tuple[float, ...] = AXIAL) -> None:
    """A real CT Image Storage file, 8x8 int16 pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    uid = "1.2.826.9." + str(int.from_bytes(sop.encode(), "big") % 10**12)  # real UIDs are digits
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, uid, "CT"
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, series + ".0", series
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.Rows = ds.Columns = 8
    ds.PixelSpacing = [0.5, 0.5]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = np.zeros((8, 8), np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def label_rows(sop: str, positive: tuple[str, ...] = ()) -> list[str]:
    subs = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
    rows = [f"{sop}_{s},{int(s in positive)}" for s in subs]
    return rows + [f"{sop}_any,{int(bool(positive))}"]


@pytest.fixture
def rsna(tmp_path: Path) -> Path:
    src = tmp_path / "rsna"
    img = src / "stage_2_train"
    img.mkdir(parents=True)
    # Series A: file names shuffled against positions; z = 20, 0, 30, 10 (flipped orientation).
    for sop, z in [("ID_aaa1", 20.0), ("ID_aaa2", 0.0), ("ID_aaa3", 30.0), ("ID_aaa4", 10.0)]:
        write_ct(img / f"{sop}.dcm", sop, "1.2.826.1", "PAT_A", (0.0, 0.0, z), FLIPPED)
    # Series B: tilted; steps along the tilted normal, files named against the order.
    normal = np.cross(TILTED[:3], TILTED[3:])
    for sop, k in [("ID_bbb1", 2), ("ID_bbb2", 0), ("ID_bbb3", 1)]:
        write_ct(img / f"{sop}.dcm", sop, "1.2.826.2", "PAT_B", tuple(5.0 * k * normal), TILTED)
    (img / "ID_ccc1.dcm").write_bytes(b"not a dicom file at all" * 10)
    lines = ["ID,Label"]
    lines += label_rows("ID_aaa1", ("subdural",)) + label_rows("ID_aaa2") + label_rows("ID_aaa3", ("intraventricular",))
    lines += label_rows("ID_aaa4") + label_rows("ID_bbb1") + label_rows("ID_bbb2") + label_rows("ID_bbb3")
    lines += ["ID_aaa1_subdural,1", "ID_bbb2_any,0"]  # duplicate rows, same labels
    lines += label_rows("ID_gone") + label_rows("ID_ccc1")  # a missing and an unreadable file
    (src / "stage_2_train.csv").write_text("\n".join(lines) + "\n")
    return src


def test_rsna_groups_orders_and_labels(rsna: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out" / "manifest.csv"
    with caplog.at_level(logging.INFO, logger="ichdet"):
        assert ADAPTERS["rsna"](rsna, out) == out
    rows = {r.scan_id: r for r in read_manifest(out)}
    assert set(rows) == {"1.2.826.1", "1.2.826.2"}
    a, b = rows["1.2.826.1"], rows["1.2.826.2"]
    assert (a.patient_id, a.label, b.patient_id, b.label) == ("PAT_A", 1, "PAT_B", 0)
    assert a.subtypes == {"epidural": 0, "intraparenchymal": 0, "intraventricular": 1,
                          "subarachnoid": 0, "subdural": 1}
    assert a.path == "rsna_series/1.2.826.1" and a.extra["series_uid"] == "1.2.826.1"
    folder = a.resolved_path(out.parent)
    assert sorted(p.name for p in folder.iterdir()) == [f"ID_aaa{i}.dcm" for i in (1, 2, 3, 4)]
    assert all(p.is_symlink() and pydicom.dcmread(p).SOPInstanceUID for p in folder.iterdir())

    slices = read_slice_labels(out.with_name("manifest_slices.csv"))
    # Order by position: aaa2 (z 0), aaa4 (10), aaa1 (20, subdural), aaa3 (30, IVH).
    assert [s.label for s in slices["1.2.826.1"]] == [0, 0, 1, 1]
    assert [s.subtypes["subdural"] for s in slices["1.2.826.1"]] == [0, 0, 1, 0]
    assert [s.subtypes["intraventricular"] for s in slices["1.2.826.1"]] == [0, 0, 0, 1]
    assert [s.slice_index for s in slices["1.2.826.2"]] == [0, 1, 2]
    text = caplog.text
    assert "duplicate label rows 2" in text and "slices without file 1" in text
    assert "unreadable files 1" in text and "2 scans, 1 positive, 2 patients" in text


def test_rsna_tilted_series_order_follows_normal(rsna: Path, tmp_path: Path) -> None:
    """A file named first but lying highest must come last; ties never fall to names or InstanceNumber."""
    out = tmp_path / "m.csv"
    prepare_rsna(rsna, out)
    # bbb2 is k=0, bbb3 k=1, bbb1 k=2: label all 0 but the order is visible through a relabel.
    csv = rsna / "stage_2_train.csv"
    csv.write_text(csv.read_text().replace("ID_bbb1_any,0", "ID_bbb1_any,1"))
    prepare_rsna(rsna, out, link="copy")
    assert [s.label for s in read_slice_labels(tmp_path / "m_slices.csv")["1.2.826.2"]] == [0, 0, 1]
    assert not any(p.is_symlink() for p in (tmp_path / "rsna_series" / "1.2.826.2").iterdir())


@pytest.mark.parametrize("bad_row, message", [
    ("ID_aaa1_any,yes", "row 2: Label must be 0 or 1, got 'yes'"),
    ("ID_aaa1_bleed,1", "row 2: ID must look like ID_<sop>_<subtype> with subtype one of epidural, "
                        "intraparenchymal, intraventricular, subarachnoid, subdural, any, got 'ID_aaa1_bleed'"),
])
def test_rsna_malformed_rows(rsna: Path, tmp_path: Path, bad_row: str, message: str) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text(f"ID,Label\n{bad_row}\n")
    out = tmp_path / "m.csv"
    with pytest.raises(InputError) as e:
        prepare_rsna(rsna, out, labels=csv)
    assert str(e.value) == f"{csv}: {message}"
    assert not out.exists() and not (tmp_path / "rsna_series").exists()


def test_rsna_conflicting_duplicate_names_the_row(rsna: Path, tmp_path: Path) -> None:
    csv = rsna / "stage_2_train.csv"
    csv.write_text(csv.read_text() + "ID_aaa2_any,1\n")
    n = len(csv.read_text().splitlines())
    with pytest.raises(InputError) as e:
        prepare_rsna(rsna, tmp_path / "m.csv")
    assert str(e.value) == f"{csv}: row {n}: ID_aaa2_any has Label 1 but an earlier row gave 0 (conflicting duplicate)"
    assert not (tmp_path / "m.csv").exists()


def test_rsna_missing_source(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="source folder not found"):
        prepare_rsna(tmp_path / "nope", tmp_path / "m.csv")
