"""Writing cohorts: files, manifest, slice labels, determinism, resume, patients."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ichdet.datasets.manifest import SUBTYPES, read_manifest, read_slice_labels
from ichdet.errors import InputError
from ichdet.io import read_dicom_series, read_nifti
from ichdet.synth import make_cohort
from ichdet.synth.cohort import is_positive, patient_for

SMALL = {"size": 64, "n_slices": 8, "slice_thickness": 10.0}


def _mask(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj).transpose(2, 1, 0)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    return make_cohort(out, 4, seed=1, fmt="nifti", difficulty=0.3, **SMALL)


def test_manifest_and_files(cohort):
    rows = read_manifest(cohort)
    assert [r.scan_id for r in rows] == [f"synth1_{i:05d}" for i in range(4)]
    assert sum(r.label for r in rows) == 2  # positive_fraction 0.5
    for r in rows:
        vol = read_nifti(r.resolved_path(cohort.parent))
        assert vol.shape == (8, 64, 64) and vol.spacing[0] == pytest.approx(10.0)
        assert -1030 < vol.hu.min() and vol.hu.max() > 700
        mask = _mask(cohort.parent / r.extra["mask_path"])
        assert mask.shape == vol.shape and mask.dtype == np.uint8
        assert r.label == int(mask.any())
        assert r.subtypes == {s: int((mask == i + 1).any()) for i, s in enumerate(SUBTYPES)}
        assert r.extra["n_slices"] == "8" and float(r.extra["difficulty"]) == 0.3


def test_slice_labels_match_the_masks(cohort):
    labels = read_slice_labels(cohort.parent / "slice_labels.csv")
    for r in read_manifest(cohort):
        mask = _mask(cohort.parent / r.extra["mask_path"])
        sl = labels[r.scan_id]
        assert [s.slice_index for s in sl] == list(range(8))
        assert [s.label for s in sl] == mask.reshape(8, -1).any(axis=1).astype(int).tolist()
        for s in sl:
            assert s.subtypes == {t: int((mask[s.slice_index] == i + 1).any()) for i, t in enumerate(SUBTYPES)}


def test_scan_does_not_depend_on_cohort_size(cohort, tmp_path):
    make_cohort(tmp_path, 2, seed=1, fmt="nifti", difficulty=0.3, **SMALL)
    for sid in ("synth1_00000", "synth1_00001"):
        a = read_nifti(tmp_path / "nifti" / f"{sid}.nii.gz").hu
        b = read_nifti(cohort.parent / "nifti" / f"{sid}.nii.gz").hu
        assert np.array_equal(a, b)
        assert np.array_equal(_mask(tmp_path / "masks" / f"{sid}.nii.gz"), _mask(cohort.parent / "masks" / f"{sid}.nii.gz"))


def test_scans_written_in_parallel_are_the_same(cohort, tmp_path):
    """`workers=2` writes the scans in two spawned processes: same manifest, labels, volumes and masks."""
    done = []
    manifest = make_cohort(tmp_path, 4, seed=1, fmt="nifti", difficulty=0.3, workers=2,
                           progress=lambda d, t: done.append((d, t)), **SMALL)
    assert manifest.read_text() == cohort.read_text()
    assert (tmp_path / "slice_labels.csv").read_text() == (cohort.parent / "slice_labels.csv").read_text()
    assert sorted(done) == [(1, 4), (2, 4), (3, 4), (4, 4)]
    for row in read_manifest(manifest):
        assert np.array_equal(read_nifti(tmp_path / row.path).hu, read_nifti(cohort.parent / row.path).hu)
        assert np.array_equal(_mask(tmp_path / row.extra["mask_path"]), _mask(cohort.parent / row.extra["mask_path"]))


def test_rerun_resumes(tmp_path):
    make_cohort(tmp_path, 3, seed=2, fmt="nifti", **SMALL)
    rec = tmp_path / "records"
    before = {p.name: p.stat().st_mtime_ns for p in rec.iterdir()}
    (rec / "synth2_00001.json").unlink()  # as if interrupted while writing scan 1
    make_cohort(tmp_path, 3, seed=2, fmt="nifti", **SMALL)
    after = {p.name: p.stat().st_mtime_ns for p in rec.iterdir()}
    assert after["synth2_00000.json"] == before["synth2_00000.json"]
    assert after["synth2_00002.json"] == before["synth2_00002.json"]
    assert "synth2_00001.json" in after
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    make_cohort(tmp_path, 3, seed=2, fmt="nifti", **{**SMALL, "size": 96})  # other args: regenerated
    assert read_nifti(tmp_path / "nifti" / "synth2_00000.nii.gz").shape == (8, 96, 96)


def test_both_formats_agree(tmp_path):
    manifest = make_cohort(tmp_path, 1, seed=3, fmt="both", **SMALL)
    row = read_manifest(manifest)[0]
    dcm = read_dicom_series(row.resolved_path(tmp_path))
    nii = read_nifti(tmp_path / row.extra["nifti_path"])
    assert (tmp_path / row.path).is_dir() and len(dcm.source) == 8
    assert np.abs(dcm.hu - nii.hu).max() <= 1.0  # both round HU to integers (ties may differ)
    assert np.allclose(dcm.affine, nii.affine, atol=1e-3)
    assert dcm.patient_id == row.patient_id and dcm.series_uid == row.extra["series_uid"]
    rec = json.loads((tmp_path / "records" / f"{row.scan_id}.json").read_text())
    assert rec["study_uid"] == dcm.study_uid


def test_patients_and_positive_fraction():
    ids = [patient_for(0, i, None)[0] for i in range(40)]
    assert 20 <= len(set(ids)) < 40  # some patients have a follow-up scan
    for i, pid in enumerate(ids):
        assert pid in (ids[i - 1] if i % 2 else pid, pid)
    assert patient_for(0, 7, None) == patient_for(0, 7, None)
    assert len({patient_for(0, i, 3)[0] for i in range(12)}) == 3
    assert abs(sum(is_positive(5, i, 0.3) for i in range(200)) - 60) <= 3


@pytest.mark.parametrize("kwargs, text", [({"fmt": "png"}, "fmt must be one of dicom, nifti, both, got 'png'"),
                                          ({"difficulty": 1.5}, "difficulty must be in [0, 1], got 1.5"),
                                          ({"positive_fraction": -0.1}, "positive_fraction must be in [0, 1], got -0.1"),
                                          ({"n_scans": 0}, "n_scans must be >= 1, got 0")])
def test_bad_arguments(tmp_path, kwargs, text):
    args = {"n_scans": 1, **SMALL, **kwargs}
    with pytest.raises(InputError, match=text.replace("[", r"\[").replace("]", r"\]")):
        make_cohort(tmp_path, **args)
