"""`ichdet synth` writes a cohort that the readers, `ichdet info` and the manifest reader take back."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from ichdet.cli import run
from ichdet.datasets.manifest import read_manifest, read_slice_labels
from ichdet.io import read_volume
from ichdet.preprocess import cranial_slices


def test_synth_then_read_back(tmp_path, capsys):
    out = tmp_path / "cohort"
    assert run(["synth", "--out", str(out), "--scans", "3", "--size", "96", "--slices", "12", "--seed", "3",
                "--format", "both", "--positive-fraction", "0.67"]) == 0
    rows = read_manifest(out / "manifest.csv")
    assert len(rows) == 3 and 1 <= sum(r.label for r in rows) <= 2  # low-discrepancy: ~0.67 of 3
    slices = read_slice_labels(out / "slice_labels.csv")
    capsys.readouterr()
    for r in rows:
        dicom = read_volume(r.resolved_path(out))
        nifti = read_volume(out / r.extra["nifti_path"])
        assert dicom.shape == nifti.shape == (12, 96, 96)
        np.testing.assert_array_equal(dicom.hu, nifti.hu)
        np.testing.assert_allclose(dicom.affine, nifti.affine, atol=1e-3)
        mask = np.asarray(nib.load(str(out / r.extra["mask_path"])).dataobj).transpose(2, 1, 0)
        per_slice = [s.label for s in slices[r.scan_id]]
        assert per_slice == [int(m.any()) for m in mask]
        assert r.label == int(any(per_slice))
        if r.label:
            assert 45 < float(np.median(dicom.hu[mask > 0])) < 95  # acute blood
        assert cranial_slices(dicom.hu, dicom.spacing).sum() >= 6
        assert run(["info", str(r.resolved_path(out)), "--json"]) == 0
        d = json.loads(capsys.readouterr().out)
        assert d["shape"] == [12, 96, 96] and d["hu_min"] >= -1024


def test_synth_bad_argument_is_one_line(tmp_path, capsys):
    assert run(["synth", "--out", str(tmp_path / "c"), "--scans", "2", "--difficulty", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ichdet: error: difficulty must be in [0, 1], got 1.5"]
