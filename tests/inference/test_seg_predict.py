"""`predict` with a segmentation bundle: the `volumes` object, the files `--out` writes (NIfTI mask in
the scan's geometry; DICOM SEG and SR for DICOM input), the CLI's output, and `evaluate` scoring the
masks against the cohort's truth.

The bundles' seg_unet says "intraparenchymal" everywhere, and predict keeps what lies in the cranial
cavity (`cranial_cavity`): a known mask (the cavity, or with the head crop the cavity within the
head's box), so every volume and every stored frame is exact."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from ichdet.cli import run as main
from ichdet.datasets.manifest import SUBTYPES, read_manifest
from ichdet.engine.bundle import load_bundle
from ichdet.evaluation.evaluate import evaluate_bundle
from ichdet.inference import Predictor
from ichdet.io import read_volume
from ichdet.preprocess import cranial_cavity
from ichdet.preprocess.masks import crop_box

IPH = SUBTYPES.index("intraparenchymal") + 1


def _rows(cohort: Path):
    return read_manifest(cohort)


def test_volumes_of_a_known_mask(cohort, seg_bundles):
    row = _rows(cohort)[0]
    scan = cohort.parent / row.path
    vol = read_volume(scan)
    p = Predictor(load_bundle(seg_bundles["iph"])).predict(scan)
    voxel_ml = float(np.prod(vol.spacing)) / 1000.0
    cranial, cavity = cranial_cavity(vol.hu, vol.spacing)
    assert 0.05 < cavity.mean() < 0.5  # the scalp, the neck and the air around the head are not cavity
    whole = cavity.sum() * voxel_ml
    v = p.volumes
    assert v["unit"] == "mL" and v["voxel_ml"] == pytest.approx(voxel_ml)
    assert v["subtypes"]["intraparenchymal"] == pytest.approx(whole, abs=1e-3)
    assert v["total"] == pytest.approx(whole, abs=1e-3)
    assert all(v["subtypes"][s] == 0 for s in SUBTYPES if s != "intraparenchymal")
    # the largest lesion is the cavity's largest connected part; C spans its slices
    parts, _ = ndimage.label(cavity)
    largest = np.bincount(parts.ravel())[1:].argmax() + 1
    z = np.flatnonzero((parts == largest).any(axis=(1, 2)))
    assert v["abc2"]["lesion_voxels"] == (parts == largest).sum()
    assert v["abc2"]["c_mm"] == pytest.approx((z[-1] - z[0] + 1) * vol.spacing[0])
    assert p.probability == pytest.approx(1.0, abs=1e-3) and p.decision
    assert p.to_dict()["volumes"] == v and p.to_dict()["outputs"] is None


def _dicts(ds):
    """Every dataset nested in `ds`'s sequences (and `ds`)."""
    yield ds
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _dicts(item)


def test_cli_writes_nifti_seg_and_sr_that_agree(cohort, seg_bundles, tmp_path, capsys):
    row = _rows(cohort)[1]
    scan = cohort.parent / row.path  # a DICOM series folder
    out = tmp_path / "out"
    bundle = seg_bundles["iph_crop"]
    assert main(["predict", str(scan), "--model", str(bundle), "--out", str(out), "--json", "--quiet"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (s,) = doc["scans"]
    files = s["outputs"]
    assert set(files) == {"mask", "seg", "sr"} and all(Path(f).is_file() for f in files.values())
    vol = read_volume(scan)
    img = nib.load(files["mask"])
    mask = np.asarray(img.dataobj).transpose(2, 1, 0)  # (x, y, z) -> (Z, H, W), as ichdet synth writes masks
    assert mask.shape == vol.shape and mask.dtype == np.uint8
    assert np.allclose(img.affine, vol.affine_ras())  # the scan's own geometry
    r0, r1, c0, c1 = crop_box(vol.hu, vol.spacing, load_bundle(bundle).prep)
    box = np.zeros(vol.shape, bool)
    box[:, r0:r1, c0:c1] = True
    cavity = cranial_cavity(vol.hu, vol.spacing)[1]
    assert 0 < box.sum() < box.size and np.array_equal(mask, np.where(box & cavity, IPH, 0))  # the cavity, in the box
    voxel_ml = float(np.prod(vol.spacing)) / 1000.0
    for i, name in enumerate(SUBTYPES):
        assert s["volumes"]["subtypes"][name] == pytest.approx((mask == i + 1).sum() * voxel_ml, abs=1e-3)
    assert s["volumes"]["total"] == pytest.approx((mask > 0).sum() * voxel_ml, abs=1e-3)
    # the SEG: each stored frame is the mask of the source slice it references
    seg = pydicom.dcmread(files["seg"])
    index = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: k for k, f in enumerate(vol.source)}
    frames = seg.pixel_array.reshape(-1, *vol.shape[1:])
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        k = index[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        label = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        assert np.array_equal(frame.astype(bool), mask[k] == label)
    # the SR holds the total volume and the probability predict printed
    sr = pydicom.dcmread(files["sr"])
    values = [float(m.NumericValue) for item in _dicts(sr) if "MeasuredValueSequence" in item
              for m in item.MeasuredValueSequence]
    assert any(v == pytest.approx(s["volumes"]["total"], abs=1e-3) for v in values)
    assert any(v == pytest.approx(s["probability"], abs=1e-6) for v in values)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert float(rows[0]["volume_ml"]) == pytest.approx(s["volumes"]["total"])


def test_nifti_input_gets_the_mask_only(cohort, seg_bundles, tmp_path):
    nifti = sorted((cohort.parent / "nifti").glob("*.nii.gz"))[0]
    p = Predictor(load_bundle(seg_bundles["iph"])).predict(nifti, outputs=tmp_path / "o")
    assert set(p.outputs) == {"mask"}
    mask = np.asarray(nib.load(p.outputs["mask"]).dataobj)
    assert mask.shape == nib.load(nifti).shape
    vol = read_volume(nifti)
    cavity = cranial_cavity(vol.hu, vol.spacing)[1]
    assert np.array_equal(mask.transpose(2, 1, 0), np.where(cavity, IPH, 0)) and cavity.any()


def test_table_shows_the_volume(cohort, seg_bundles, capsys):
    scan = cohort.parent / _rows(cohort)[0].path
    assert main(["predict", str(scan), "--model", str(seg_bundles["iph"]), "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[3].startswith("  volume: ") and "(intraparenchymal " in out[3] and "ABC/2 of the largest lesion" in out[3]


def test_onnx_runtime_is_refused(seg_bundles, cohort, capsys):
    scan = cohort.parent / _rows(cohort)[0].path
    assert main(["predict", str(scan), "--model", str(seg_bundles["iph"]), "--runtime", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"ichdet: error: bundle {seg_bundles['iph']} segments: it runs in PyTorch (--runtime auto or torch), "
                   "not onnx")


def test_evaluate_scores_the_masks(cohort, seg_bundles, tmp_path):
    result = evaluate_bundle(seg_bundles["iph"], cohort, tmp_path / "ev", split="all")
    seg = result["segmentation"]
    assert (tmp_path / "ev" / "segmentation.md").is_file() and (tmp_path / "ev" / "bland_altman.png").is_file()
    # the model marks the whole cranial cavity C: Dice of "any" = 2|T & C| / (|T| + |C|) on every scan with
    # a bleed; the others are scored by their false-positive volume (the cavity)
    expected, bleeds, negatives = [], 0, 0
    for row in _rows(cohort):
        truth = np.asarray(nib.load(cohort.parent / row.extra["mask_path"]).dataobj).transpose(2, 1, 0) > 0
        vol = read_volume(cohort.parent / row.path)
        cavity = cranial_cavity(vol.hu, vol.spacing)[1]
        if truth.any():
            expected.append(2 * (truth & cavity).sum() / (truth.sum() + cavity.sum()))
        bleeds += bool(truth.any())
        negatives += not truth.any()
    assert seg["labels"]["any"]["dice"]["n"] == len(expected) == bleeds and 0 < bleeds < len(_rows(cohort))
    assert seg["labels"]["any"]["false_positive_ml"]["scans_with_volume"] == negatives
    assert seg["labels"]["any"]["dice"]["median"] == pytest.approx(float(np.median(expected)))
    assert seg["n_scans"] == len(_rows(cohort)) and result["bundle_kind"] == "segmentation"
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["segmentation"]["total"]["n"] == bleeds
