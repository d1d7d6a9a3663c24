"""PhysioNet CT-ICH adapter: NIfTI volumes + per-slice CSV; SliceNumber -> slice_index from the affine."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ichdet.datasets.adapters import prepare_ctich
from ichdet.datasets.adapters.ctich import slice_index
from ichdet.datasets.manifest import read_manifest, read_slice_labels
from ichdet.errors import InputError

HEADER = "PatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,Subdural,No_Hemorrhage,Fracture_Yes_No"


def write_nifti(path: Path, n_slices: int, k_inferior: bool = False) -> None:
    affine = np.diag([0.5, 0.5, -5.0 if k_inferior else 5.0, 1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, n_slices), np.int16), affine), str(path))


def row(patient: int, number: int, subtype: str | None = None, fracture: int = 0) -> str:
    cols = ["Intraventricular", "Intraparenchymal", "Subarachnoid", "Epidural", "Subdural"]
    flags = [int(c == subtype) for c in cols]
    return ",".join(map(str, [patient, number, *flags, int(subtype is None), fracture]))


@pytest.fixture
def ctich(tmp_path: Path) -> Path:
    src = tmp_path / "ct-ich"
    write_nifti(src / "ct_scans" / "049.nii", 5)
    write_nifti(src / "masks" / "049.nii", 5)
    write_nifti(src / "ct_scans" / "050.nii", 4, k_inferior=True)
    write_nifti(src / "ct_scans" / "052.nii", 3)  # no label rows
    lines = [HEADER]
    lines += [row(49, k, "Intraparenchymal" if k == 2 else None) for k in range(1, 6)]
    lines += [row(49, 2, "Intraparenchymal")]  # an exact duplicate
    lines += [row(50, k, "Subdural" if k == 1 else None, fracture=int(k == 4)) for k in range(1, 5)]
    lines += [row(51, 1)]  # no volume
    (src / "hemorrhage_diagnosis_raw_ct.csv").write_text("\n".join(lines) + "\n")
    return src


def test_ctich_manifest_and_slice_order(ctich: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="ichdet")
    out = prepare_ctich(ctich, ctich / "manifest.csv")
    rows = {r.scan_id: r for r in read_manifest(out)}
    assert set(rows) == {"049", "050"}
    a, b = rows["049"], rows["050"]
    assert (a.path, a.extra["mask_path"], a.label, a.patient_id) == ("ct_scans/049.nii", "masks/049.nii", 1, "049")
    assert a.subtypes["intraparenchymal"] == 1 and a.subtypes["subdural"] == 0
    assert (b.label, b.subtypes["subdural"], b.extra["fracture"], b.extra["n_slices"]) == (1, 1, "1", "4")
    assert a.extra["mask_labels"] == "any"
    assert "mask_path" not in b.extra or b.extra["mask_path"] == ""
    slices = read_slice_labels(ctich / "manifest_slices.csv")
    assert [s.label for s in slices["049"]] == [0, 1, 0, 0, 0]  # k up: SliceNumber 2 -> index 1
    assert [s.label for s in slices["050"]] == [0, 0, 0, 1]     # k down: SliceNumber 1 -> index 3
    assert [s.slice_index for s in slices["050"]] == [0, 1, 2, 3]
    for text in ("duplicate label rows 1", "volumes without labels 1", "labelled patients without volume 1",
                 "2 scans, 2 positive, 2 patients"):
        assert text in caplog.text


def test_slice_index_mapping() -> None:
    assert [slice_index(n, 4, False) for n in (1, 2, 3, 4)] == [0, 1, 2, 3]
    assert [slice_index(n, 4, True) for n in (1, 2, 3, 4)] == [3, 2, 1, 0]


@pytest.mark.parametrize("extra_row, message", [
    ("49,3,0,0,0,0,0,2,0", "row 9: No_Hemorrhage must be 0 or 1, got '2'"),
    ("49,0,0,0,0,0,0,1,0", "row 9: SliceNumber must be >= 1, got '0'"),
    ("49,x,0,0,0,0,0,1,0", "row 9: SliceNumber must be an integer, got 'x'"),
    ("49,3,0,0,0,0,1,0,0", "row 9: PatientNumber 49 SliceNumber 3 conflicts with row 4"),
    ("49,6,0,0,0,0,0,1,0", "row 9: SliceNumber 6 is beyond the 5 slices of {src}/ct_scans/049.nii"),
])
def test_ctich_bad_rows(ctich: Path, tmp_path: Path, extra_row: str, message: str) -> None:
    csv = ctich / "hemorrhage_diagnosis_raw_ct.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:8] + [extra_row]) + "\n")
    out = tmp_path / "m.csv"
    with pytest.raises(InputError) as e:
        prepare_ctich(ctich, out)
    assert str(e.value) == f"{csv}: " + message.format(src=ctich)
    assert not out.exists() and not (tmp_path / "m_slices.csv").exists()


def test_ctich_missing_columns_and_folder(ctich: Path, tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text("PatientNumber,SliceNumber\n49,1\n")
    with pytest.raises(InputError, match="lacks column\\(s\\) No_Hemorrhage"):
        prepare_ctich(ctich, tmp_path / "m.csv", labels=csv)
    with pytest.raises(InputError, match="CT scan folder not found"):
        prepare_ctich(tmp_path, tmp_path / "m.csv")
