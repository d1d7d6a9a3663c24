"""Patient-level splits: disjoint, stratified, deterministic, order-free; manifest column honoured."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from ichdet.datasets.manifest import ManifestRow, read_manifest, write_manifest
from ichdet.datasets.splits import read_splits, split_by_patient, split_counts, write_splits
from ichdet.errors import InputError


def cohort_rows(n_pos: int = 20, n_neg: int = 20) -> list[ManifestRow]:
    """Patients with 1-3 scans each; a positive patient has one positive scan, the rest negative."""
    rows = []
    for p in range(n_pos + n_neg):
        positive = p < n_pos
        for k in range(1 + p % 3):
            rows.append(ManifestRow(f"s{p:03d}_{k}", f"p{p:03d}", f"scans/s{p:03d}_{k}",
                                    int(positive and k == 0)))
    return rows


def test_patients_never_cross_splits_and_every_split_has_both_classes() -> None:
    rows = cohort_rows()
    mapping = split_by_patient(rows, seed=3)
    assert set(mapping) == {r.scan_id for r in rows}
    by_patient: dict[str, set[str]] = {}
    for r in rows:
        by_patient.setdefault(r.patient_id, set()).add(mapping[r.scan_id])
    assert all(len(s) == 1 for s in by_patient.values())
    counts = split_counts(rows, mapping)
    # 20 positive and 20 negative patients: round(0.15 * 20) = 3 of each in val and in test
    for split, (pos, total) in {"train": (14, 28), "val": (3, 6), "test": (3, 6)}.items():
        assert (counts[split]["positive_patients"], counts[split]["patients"]) == (pos, total)
    assert sum(c["scans"] for c in counts.values()) == len(rows)


def test_deterministic_and_independent_of_row_order() -> None:
    rows = cohort_rows()
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    assert split_by_patient(rows, seed=5) == split_by_patient(shuffled, seed=5)
    assert split_by_patient(rows, seed=5) == split_by_patient(rows, seed=5)
    assert split_by_patient(rows, seed=5) != split_by_patient(rows, seed=6)


def test_zero_fraction_leaves_split_empty_and_small_cohorts_keep_one_of_each() -> None:
    rows = cohort_rows(3, 4)
    mapping = split_by_patient(rows, val_fraction=0.0, test_fraction=0.15)
    assert "val" not in mapping.values()
    counts = split_counts(rows, split_by_patient(rows))
    for split in ("train", "val", "test"):
        assert counts[split]["positive_patients"] == 1 or split == "train"
        assert counts[split]["patients"] - counts[split]["positive_patients"] >= 1
    assert counts["train"]["positive_patients"] == 1


def test_too_few_positive_patients_is_explained() -> None:
    with pytest.raises(InputError) as e:
        split_by_patient(cohort_rows(2, 10))
    assert str(e.value) == (
        "cannot split by patient: 2 positive patient(s), but each of train, val, test needs at least one; "
        "need 3 positive patients (or set val/test fractions to 0, or give a 'split' column in the manifest)")
    assert split_by_patient(cohort_rows(2, 10), test_fraction=0.0)  # two splits need two


@pytest.mark.parametrize("val, test", [(-0.1, 0.1), (0.5, 0.5), (1.0, 0.0)])
def test_bad_fractions(val: float, test: float) -> None:
    with pytest.raises(InputError, match="fraction"):
        split_by_patient(cohort_rows(), val_fraction=val, test_fraction=test)


def _with_split_column(tmp_path: Path, splits: list[str]) -> list[ManifestRow]:
    rows = [ManifestRow("a1", "pa", "a1", 1, extra={"split": splits[0]}),
            ManifestRow("a2", "pa", "a2", 0, extra={"split": splits[1]}),
            ManifestRow("b1", "pb", "b1", 0, extra={"split": splits[2]})]
    return read_manifest(write_manifest(tmp_path / "manifest.csv", rows))


def test_manifest_split_column_is_used(tmp_path: Path) -> None:
    rows = _with_split_column(tmp_path, ["test", "TEST", " val "])
    assert split_by_patient(rows) == {"a1": "test", "a2": "test", "b1": "val"}
    assert split_by_patient(rows, use_column=False, val_fraction=0, test_fraction=0) == dict.fromkeys(
        ["a1", "a2", "b1"], "train")


def test_manifest_split_column_violations(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        split_by_patient(_with_split_column(tmp_path, ["train", "test", "val"]))
    assert str(e.value) == ("patient 'pa' has scans in more than one split: train (a1), test (a2); "
                            "a patient's scans must all be in one split")
    with pytest.raises(InputError) as e:
        split_by_patient(_with_split_column(tmp_path, ["train", "train", "validation"]))
    assert str(e.value) == "scan 'b1': split must be one of train, val, test, got 'validation'"
    with pytest.raises(InputError) as e:
        split_by_patient(_with_split_column(tmp_path, ["train", "train", ""]))
    assert str(e.value) == "scan 'b1': split must be one of train, val, test, got ''"


def test_write_read_round_trip(tmp_path: Path) -> None:
    mapping = split_by_patient(cohort_rows(), seed=1)
    path = write_splits(tmp_path / "splits.csv", mapping)
    assert read_splits(path) == mapping
    assert path.read_text().splitlines()[0] == "scan_id,split"
    path.write_text("scan_id,split\nx,train\nx,val\n")
    with pytest.raises(InputError, match=r"row 3: duplicate scan_id 'x'"):
        read_splits(path)
    path.write_text("scan_id,split\nx,holdout\n")
    with pytest.raises(InputError, match="row 2: split must be one of train, val, test, got 'holdout'"):
        read_splits(path)
