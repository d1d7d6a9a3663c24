"""Manifest schema: round trips and errors that name the file, row and column."""
from __future__ import annotations

from pathlib import Path

import pytest

from ichdet.datasets.manifest import (
    ManifestRow, SliceLabel, read_manifest, read_slice_labels, write_manifest, write_slice_labels,
)
from ichdet.errors import InputError

HEADER = "scan_id,patient_id,path,label"


def test_round_trip_with_subtypes_and_extras(tmp_path: Path) -> None:
    rows = [
        ManifestRow("s1", "p1", "series/s1", 1, {"subdural": 1, "epidural": 0, "intraparenchymal": 0,
                                                  "intraventricular": 0, "subarachnoid": 0}, {"series_uid": "1.2.3"}),
        ManifestRow("s2", "p1", "/abs/s2.nii", 0, {}, {"series_uid": ""}),
    ]
    path = write_manifest(tmp_path / "m.csv", rows)
    back = read_manifest(path)
    assert back[0] == rows[0]
    assert (back[1].subtypes, back[1].extra) == ({}, {"series_uid": ""})
    assert back[0].resolved_path(tmp_path) == tmp_path / "series" / "s1"
    assert back[1].resolved_path(tmp_path) == Path("/abs/s2.nii")
    assert path.read_text().splitlines()[0] == (
        "scan_id,patient_id,path,label,epidural,intraparenchymal,intraventricular,subarachnoid,subdural,series_uid")


def test_header_spaces_and_bom_are_forgiven(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text("\ufeff scan_id , patient_id,path , label \na,,x.png,1.0\n", encoding="utf-8")
    (row,) = read_manifest(p)
    assert (row.scan_id, row.patient_id, row.path, row.label) == ("a", "a", "x.png", 1)


@pytest.mark.parametrize("body, message", [
    ("a,p,x,2\n", "row 2: column 'label' must be 0 or 1, got '2'"),
    ("a,p,x,1\nb,p,y,maybe\n", "row 3: column 'label' must be 0 or 1, got 'maybe'"),
    ("a,p,x,1\na,p,y,0\n", "row 3: duplicate scan_id 'a'"),
    ("a,p,,1\n", "row 2: empty path"),
    (",p,x,1\n", "row 2: empty scan_id"),
    ("a,p,x,1,extra\n", "row 2: more fields than header columns"),
])
def test_bad_rows_name_row_and_column(tmp_path: Path, body: str, message: str) -> None:
    p = tmp_path / "m.csv"
    p.write_text(HEADER + "\n" + body)
    with pytest.raises(InputError) as e:
        read_manifest(p)
    assert str(e.value) == f"{p}: {message}"


def test_bad_subtype_and_missing_columns(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text(HEADER + ",subdural\na,p,x,1,y\n")
    with pytest.raises(InputError) as e:
        read_manifest(p)
    assert str(e.value) == f"{p}: row 2: column 'subdural' must be 0 or 1, got 'y'"
    p.write_text("scan_id,path\na,x\n")
    with pytest.raises(InputError, match=r"manifest lacks column\(s\) patient_id, label"):
        read_manifest(p)
    p.write_text(HEADER + "\n")
    with pytest.raises(InputError, match="header but no rows"):
        read_manifest(p)
    with pytest.raises(InputError, match="manifest not found"):
        read_manifest(tmp_path / "absent.csv")


def test_slice_labels_round_trip_and_errors(tmp_path: Path) -> None:
    rows = [SliceLabel("s", 1, 1, {"subdural": 1}), SliceLabel("s", 0, 0, {"subdural": 0}), SliceLabel("t", 0, 1)]
    p = write_slice_labels(tmp_path / "m_slices.csv", rows)
    back = read_slice_labels(p)
    assert [s.slice_index for s in back["s"]] == [0, 1] and back["s"][1].subtypes["subdural"] == 1
    assert back["t"][0].label == 1 and back["t"][0].subtypes == {}
    p.write_text("scan_id,slice_index,label\ns,-1,0\n")
    with pytest.raises(InputError) as e:
        read_slice_labels(p)
    assert str(e.value) == f"{p}: row 2: slice_index must be >= 0, got -1"
    p.write_text("scan_id,slice_index,label\ns,one,0\n")
    with pytest.raises(InputError, match="row 2: slice_index must be an integer, got 'one'"):
        read_slice_labels(p)

