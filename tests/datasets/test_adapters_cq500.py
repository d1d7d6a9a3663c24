"""CQ500 adapter: series picking from headers, majority votes, zipped cases, the real CQ500-CT-1."""
from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ichdet.datasets.adapters import prepare_cq500
from ichdet.datasets.adapters.cq500 import case_key, read_reads, scan_case
from ichdet.datasets.adapters.series_pick import pick_series
from ichdet.datasets.manifest import read_manifest
from ichdet.errors import InputError

TILT = math.radians(15)  # CQ500 studies are often acquired with a gantry tilt
TILTED = (1.0, 0.0, 0.0, 0.0, math.cos(TILT), -math.sin(TILT))
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def write_series(folder: Path, n: int, *, thickness: float, kernel: str = "STANDARD", description: str = "",
                 orientation: tuple[float, ...] = TILTED, image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
                 patient: str = "CQ500-CT-1") -> str:
    """n real CT files (8x8) of one series in `folder`, named CT000000.dcm...; returns the series UID."""
    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    normal = np.cross(orientation[:3], orientation[3:])
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, sop, "CT"
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, "1.2.3.4", series
        ds.SeriesDescription, ds.ConvolutionKernel, ds.SliceThickness = description, kernel, f"{thickness:g}"
        ds.ImageType = image_type.split("\\")
        ds.ImagePositionPatient = [f"{v:.4f}" for v in normal * thickness * k]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.zeros((8, 8), np.int16).tobytes()
        ds.save_as(folder / f"CT{len(list(folder.iterdir())):06d}.dcm", enforce_file_format=True)
    return series


READS = """name, Category ,R1:ICH,R1:IPH,R1:IVH,R1:SDH,R1:EDH,R1:SAH,R1:Fracture, R2:ICH ,R2:IPH,R2:IVH,R2:SDH,R2:EDH,R2:SAH,R2:Fracture,R3:ICH,R3:IPH,R3:IVH,R3:SDH,R3:EDH,R3:SAH,R3:Fracture
CQ500-CT-1,B1,1,1,0,0,0,1,0,1,1,1,0,0,0,0,0,0,0,0,0,0,0
CQ500-CT-2,B1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0
CQ500-CT-3,B2,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0
CQ500-CT-4,B2,1,0,0,1,0,0,0,1,0,0,1,0,0,0,1,0,0,1,0,0,0
"""


@pytest.fixture
def cq500(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    src = tmp_path / "cq500"
    study = src / "CQ500-CT-1" / "CQ500CT1 CQ500CT1" / "Unknown Study"
    uids = {
        "plain5": write_series(study / "CT PLAIN 5mm", 12, thickness=5.0, description="CT PLAIN 5mm"),
        "bone": write_series(study / "CT BONE", 12, thickness=5.0, kernel="BONEPLUS", description="CT 5mm"),
        "sharp": write_series(study / "CT 5mm H70", 12, thickness=5.0, kernel="H70h", description="CT 5mm"),
        "contrast": write_series(study / "CT POST CONTRAST", 20, thickness=5.0, description="CT POST CONTRAST 5mm"),
        "thin": write_series(study / "CT Thin", 30, thickness=0.625, description="CT 0.625mm"),
        "sagittal": write_series(study / "CT SAG", 15, thickness=5.0, orientation=SAGITTAL, description="SAG"),
        "scout": write_series(study / "CT Scout", 1, thickness=5.0, image_type="ORIGINAL\\PRIMARY\\LOCALIZER"),
    }
    # Case 2 is zipped; its 5 mm series has too few slices, so its thin one is taken.
    staging = tmp_path / "staging" / "CQ500CT2 CQ500CT2" / "Unknown Study"
    uids["zip_short"] = write_series(staging / "CT 5mm", 6, thickness=5.0, patient="CQ500-CT-2")
    uids["zip_thin"] = write_series(staging / "CT Plain Thin", 11, thickness=1.25, patient="CQ500-CT-2")
    with zipfile.ZipFile(src / "CQ500-CT-2.zip", "w") as zf:
        for p in sorted(staging.parent.rglob("*.dcm")):
            zf.write(p, p.relative_to(staging.parent.parent).as_posix())
    # Case 3: only a bone series -> skipped; CQ500-CT-4 has no images; CQ500-CT-9 has no reads row.
    write_series(src / "CQ500-CT-3" / "s" / "CT BONE", 12, thickness=5.0, description="CT BONE", patient="CQ500-CT-3")
    write_series(src / "CQ500-CT-9" / "s" / "CT 5mm", 12, thickness=5.0, patient="CQ500-CT-9")
    (src / "reads.csv").write_text(READS)
    return src, uids


def test_cq500_picks_plain_axial_and_votes(cq500: tuple[Path, dict[str, str]], tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    src, uids = cq500
    out = tmp_path / "out" / "manifest.csv"
    caplog.set_level("INFO", logger="ichdet")
    prepare_cq500(src, out)
    rows = {r.scan_id: r for r in read_manifest(out)}
    assert set(rows) == {"CQ500-CT-1", "CQ500-CT-2"}
    one, two = rows["CQ500-CT-1"], rows["CQ500-CT-2"]
    # 5 mm plain beats 5 mm contrast (more slices), bone, sharp kernel, sagittal, thin and scout.
    assert one.extra["series_uid"] == uids["plain5"]
    assert one.resolved_path(out.parent) == src / "CQ500-CT-1" / "CQ500CT1 CQ500CT1" / "Unknown Study" / "CT PLAIN 5mm"
    assert one.path.startswith("/")  # outside the manifest's folder -> absolute
    assert (one.label, one.patient_id, one.extra["category"]) == (1, "CQ500-CT-1", "B1")
    assert one.subtypes == {"intraparenchymal": 1, "intraventricular": 0, "subdural": 0,
                            "epidural": 0, "subarachnoid": 0}
    assert two.label == 0 and two.extra["series_uid"] == uids["zip_thin"]
    assert two.path == f"cq500_series/CQ500-CT-2/{uids['zip_thin']}"
    assert len(list(two.resolved_path(out.parent).glob("*.dcm"))) == 11
    assert "2 scans, 1 positive, 2 patients" in caplog.text
    assert "cases without a usable series 1" in caplog.text and "cases without reads 1" in caplog.text
    assert "reads rows without images 1" in caplog.text


def test_cq500_prefer_thickness(cq500: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    src, uids = cq500
    out = prepare_cq500(src, tmp_path / "m.csv", prefer_thickness=0.6)
    assert {r.scan_id: r.extra["series_uid"] for r in read_manifest(out)}["CQ500-CT-1"] == uids["thin"]


def test_read_reads_majority_and_errors(tmp_path: Path) -> None:
    reads = tmp_path / "reads.csv"
    reads.write_text(READS)
    votes = read_reads(reads)
    assert votes["CQ500-CT-4"].label == 1 and votes["CQ500-CT-4"].subtypes["subdural"] == 1
    assert votes["CQ500-CT-1"].subtypes["subarachnoid"] == 0  # 1 of 3
    reads.write_text(READS.replace("CQ500-CT-3,B2,0,0", "CQ500-CT-3,B2,x,0"))
    with pytest.raises(InputError) as e:
        read_reads(reads)
    assert str(e.value) == f"{reads}: row 4: R1:ICH must be 0 or 1, got 'x'"
    reads.write_text("name,Category\nCQ500-CT-1,B1\n")
    with pytest.raises(InputError, match="no R<n>:ICH reader columns"):
        read_reads(reads)


def test_case_key() -> None:
    assert case_key("CQ500CT12 CQ500CT12") == case_key("CQ500-CT-12.zip") == case_key("cq500-ct-12") == "CQ500-CT-12"
    assert case_key("other") is None


def test_cq500_real_flat_study(cq500_dir: Path, tmp_path: Path) -> None:
    """The real CQ500-CT-1 folder: 238 thin slices + one stray 5 mm slice, flat; reads.csv here."""
    reads = tmp_path / "reads.csv"
    reads.write_text(READS)
    out = prepare_cq500(cq500_dir, tmp_path / "m.csv", reads=reads)
    (row,) = read_manifest(out)
    assert row.scan_id == "CQ500-CT-1" and row.label == 1
    assert Path(row.path) == cq500_dir.absolute()
    assert row.extra["series_uid"] == "1.2.276.0.7230010.3.1.3.296485376.1.1521714308.2032152"
    assert row.extra["n_slices"] == "238"


def test_cq500_no_match_is_an_error(cq500: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    src, _ = cq500
    reads = tmp_path / "reads.csv"
    reads.write_text(READS.splitlines()[0] + "\nCQ500-CT-77" + ",0" * 22 + "\n")
    out = tmp_path / "m.csv"
    with pytest.raises(InputError, match="no case in .* matched reads.csv"):
        prepare_cq500(src, out, reads=reads)
    assert not out.exists() and not (tmp_path / "cq500_series").exists()


def test_pick_series_reasons(cq500: tuple[Path, dict[str, str]]) -> None:
    src, uids = cq500
    headers, problems = scan_case(src / "CQ500-CT-1")
    best, reasons = pick_series(headers)
    assert best is not None and best.uid == uids["plain5"] and not problems
    why = {name: reasons[uid] for name, uid in uids.items() if uid in reasons}
    assert why["scout"] == "localizer" and why["sagittal"].startswith("not axial")
    assert why["bone"].startswith("bone reconstruction") and why["sharp"].startswith("bone reconstruction")
    assert why["thin"].startswith("ranked below") and why["contrast"].startswith("ranked below")


def test_contrast_series_loses_to_any_plain_one_whatever_its_thickness() -> None:
    from ichdet.datasets.adapters.series_pick import SeriesInfo, rank_key

    def info(uid: str, desc: str, thickness: float) -> SeriesInfo:
        return SeriesInfo(uid=uid, headers=[], modality="CT", description=desc, kernel="STANDARD",
                          image_type="ORIGINAL", thickness=thickness, tilt_deg=0.0)

    post_5mm = info("1", "HEAD POST CONTRAST 5mm", 5.0)
    thin_plain = info("2", "PLAIN THIN", 0.625)
    neutral_3mm = info("3", "HEAD 3mm", 3.0)
    ranked = sorted([post_5mm, thin_plain, neutral_3mm], key=rank_key)
    assert [s.uid for s in ranked] == ["3", "2", "1"]
