"""Image-folder adapter: Kaggle head_ct layout, zero-padded ids, stray header spaces, label and patient
column choice."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ichdet.datasets.adapters import prepare_folder
from ichdet.datasets.adapters.common import read_csv
from ichdet.datasets.adapters.folder import find_patient_column, id_key
from ichdet.datasets.manifest import read_manifest
from ichdet.errors import InputError, InputWarning


def write_png(path: Path, mode: str, size: tuple[int, int] = (12, 10), fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
    arr = np.random.default_rng(0).integers(0, 255, (size[1], size[0], *channels), dtype=np.uint8)
    Image.fromarray(arr, mode).save(path, fmt)


@pytest.fixture
def kaggle(tmp_path: Path) -> Path:
    """SRC/head_ct/head_ct/000.png ... + SRC/labels.csv with header 'id, hemorrhage'."""
    src = tmp_path / "head-ct"
    images = src / "head_ct" / "head_ct"
    for i, mode in enumerate(["L", "RGB", "RGBA", "L", "RGB"]):
        write_png(images / f"{i:03d}.png", mode, size=(12 + i, 10))
    (src / "labels.csv").write_text("id, hemorrhage\n0,1\n1,1\n2,0\n3,0\n7,1\n")  # 4.png unlabelled, 7 missing
    return src


def test_kaggle_layout_found_and_matched(kaggle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="ichdet")
    out = prepare_folder(kaggle, tmp_path / "m.csv")
    rows = read_manifest(out)
    assert [(r.scan_id, r.label, r.patient_id) for r in rows] == [
        ("000", 1, "000"), ("001", 1, "001"), ("002", 0, "002"), ("003", 0, "003")]
    assert rows[0].resolved_path(tmp_path) == kaggle / "head_ct" / "head_ct" / "000.png"
    assert "labels without image 1" in caplog.text and "images without label 1" in caplog.text
    assert "4 scans, 2 positive, 4 patients" in caplog.text


def test_padded_ids_match_plain_stems_and_patient_column(tmp_path: Path) -> None:
    src = tmp_path / "set"
    write_png(src / "img" / "7.jpg", "RGB", fmt="JPEG")
    write_png(src / "img" / "12.jpg", "L", fmt="JPEG")
    (src / "img" / "notes.txt").write_text("not an image")
    (src / "meta.csv").write_text(" image_id , patient , hemorrhage , split \n007,P1,1,train\n0012,P1,0,test\n")
    out = prepare_folder(src, src / "manifest.csv", patient_column="patient")
    rows = read_manifest(out)
    assert [(r.scan_id, r.patient_id, r.label, r.path) for r in rows] == [
        ("12", "P1", 0, "img/12.jpg"), ("7", "P1", 1, "img/7.jpg")]
    # A second run does not take its own manifest for the labels CSV.
    assert prepare_folder(src, src / "manifest.csv", patient_column="patient") == out


def test_patient_column_found_by_its_usual_names(tmp_path: Path) -> None:
    for header, expected in (("id,patient,hemorrhage", "patient"), ("id, Patient ID ,label", "Patient ID"),
                             ("\ufeffname,SUBJECT,y", "SUBJECT"), ("id,subject_id,patientid", "subject_id"),
                             ("id,label,patients", None)):
        (tmp_path / "l.csv").write_text(header + "\n", encoding="utf-8")
        assert find_patient_column(read_csv(tmp_path / "l.csv")) == expected, header


def test_patient_column_groups_images_and_an_explicit_one_wins(tmp_path: Path) -> None:
    src = tmp_path / "set"
    for i in range(3):
        write_png(src / f"{i}.png", "L")
    (src / "labels.csv").write_text("id,Patient_ID,site,label\n0,P1,A,1\n1,P1,B,0\n2,P2,A,0\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)  # a patient column found: no warning
        rows = read_manifest(prepare_folder(src, tmp_path / "m.csv"))
    assert [(r.scan_id, r.patient_id, r.label) for r in rows] == [("0", "P1", 1), ("1", "P1", 0), ("2", "P2", 0)]
    rows = read_manifest(prepare_folder(src, tmp_path / "m.csv", patient_column="site"))
    assert [r.patient_id for r in rows] == ["A", "B", "A"]


def test_no_patient_column_warns_once(kaggle: Path, tmp_path: Path) -> None:
    with pytest.warns(InputWarning) as caught:
        rows = read_manifest(prepare_folder(kaggle, tmp_path / "m.csv"))
    assert [str(w.message) for w in caught if w.category is InputWarning] == [
        f"{kaggle / 'labels.csv'}: no patient column (named patient, patient_id, patientid, patient id, subject, "
        f"subject_id, or given by --patient-column): each image is its own patient"]
    assert [r.patient_id for r in rows] == [r.scan_id for r in rows] == ["000", "001", "002", "003"]


def test_ambiguous_label_columns_listed(kaggle: Path, tmp_path: Path) -> None:
    csv = kaggle / "labels.csv"
    csv.write_text("id, hemorrhage ,is_test\n0,1,0\n1,0,1\n2,0,0\n")
    with pytest.raises(InputError) as e:
        prepare_folder(kaggle, tmp_path / "m.csv")
    assert str(e.value) == f"{csv}: several 0/1 columns could be the label: hemorrhage, is_test; pass --label-column"
    rows = read_manifest(prepare_folder(kaggle, tmp_path / "m.csv", label_column=" hemorrhage"))
    assert [r.label for r in rows] == [1, 0, 0]


def test_bad_values_and_no_match(kaggle: Path, tmp_path: Path) -> None:
    csv = kaggle / "labels.csv"
    out = tmp_path / "m.csv"
    csv.write_text("id, hemorrhage,score\n0,1,0.3\n1,yes,0.2\n")
    with pytest.raises(InputError) as e:
        prepare_folder(kaggle, out, label_column="hemorrhage")
    assert str(e.value) == f"{csv}: row 3: hemorrhage must be 0 or 1, got 'yes'"
    csv.write_text("id,hemorrhage\n100,1\n101,0\n")
    with pytest.raises(InputError, match="no id in column 'id' matches an image stem"):
        prepare_folder(kaggle, out)
    csv.write_text("id,hemorrhage\n1,1\n001,0\n")
    with pytest.raises(InputError, match="row 3: id '001' repeats row 2"):
        prepare_folder(kaggle, out)
    with pytest.raises(InputError, match="--label-column 'bleed' is not a column"):
        prepare_folder(kaggle, out, label_column="bleed")
    assert not out.exists()


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="source folder not found"):
        prepare_folder(tmp_path / "absent", tmp_path / "m.csv")
    src = tmp_path / "two"
    write_png(src / "a" / "1.png", "L")
    write_png(src / "b" / "2.png", "L")
    (src / "labels.csv").write_text("id,label\n1,1\n2,0\n")
    with pytest.raises(InputError, match="cannot tell which folder holds the images .* pass --images"):
        prepare_folder(src, tmp_path / "m.csv")
    assert len(read_manifest(prepare_folder(src, tmp_path / "m.csv", images=src / "a"))) == 1


def test_id_key() -> None:
    assert id_key("007") == id_key("7") == id_key("7.0") == id_key("007.png") == "7"
    assert id_key("000") == "0" and id_key(" scan_a ") == "scan_a"
