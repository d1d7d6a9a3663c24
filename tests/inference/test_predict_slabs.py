"""predict on a series thinner than the training scans: merged into slabs of the bundle's training
slice thickness (maximum HU) before the model, the result naming the original slices and saying
what was done; a bundle without a thickness (older ones) predicts exactly as before."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import ichdet
from ichdet.datasets.prepared import PreparedCohort
from ichdet.engine.bundle import META
from ichdet.engine.scoring import score_scans
from ichdet.inference import Predictor, format_table
from ichdet.io import Volume, read_volume
from ichdet.preprocess import prepare_volume, slab_max
from ichdet.synth import make_cohort

THIN_SLICES = 48  # of 0.625 mm: 6 slabs of 8 slices = 5 mm each


def with_thickness(bundle: Path, out: Path, thickness: float | None) -> Path:
    """A copy of `bundle` whose bundle.json records `thickness` (None: the key removed, as in
    bundles written before ichdet recorded it)."""
    shutil.copytree(bundle, out)
    meta = json.loads((out / META).read_text())
    meta.pop("slice_thickness_mm", None)
    if thickness is not None:
        meta["slice_thickness_mm"] = thickness
    (out / META).write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="module")
def thin_manifest(tmp_path_factory) -> Path:
    """4 synthetic scans (two positive), 48 slices of 0.625 mm, 64 x 64, DICOM."""
    return make_cohort(tmp_path_factory.mktemp("thin"), 4, seed=7, size=64, n_slices=THIN_SLICES,
                       slice_thickness=0.625, difficulty=0.2)


@pytest.fixture(scope="module")
def thin_scan(thin_manifest) -> Path:
    return sorted((thin_manifest.parent / "scans").iterdir())[0]


@pytest.fixture(scope="module")
def scan5(bundles, tmp_path_factory) -> Path:
    """The scan bundle (2x2x2 filter) trained, it says, on 5 mm scans."""
    return with_thickness(bundles["scan"], tmp_path_factory.mktemp("b") / "scan5", 5.0)


@pytest.fixture(scope="module")
def scan_old(bundles, tmp_path_factory) -> Path:
    """The same weights in a bundle that records no thickness."""
    return with_thickness(bundles["scan"], tmp_path_factory.mktemp("b") / "scan_old", None)


def test_a_thin_series_reaches_the_model_as_5_mm_slabs(scan5, scan_old, thin_scan):
    """48 slices of 0.625 mm -> 6 slabs of 8 -> 3 prepared slices (pairs of slabs): the scan scores
    as a 5 mm scan of the slabs' maximum HU scores with the bundle that does no reformat."""
    p = Predictor(ichdet.load_bundle(scan5), precision="fp32")
    assert p.prep.slab_mm == 5.0 and p.bundle.prep.slab_mm is None
    vol = read_volume(thin_scan)
    assert vol.shape == (THIN_SLICES, 64, 64) and vol.spacing[0] == pytest.approx(0.625)
    volume, image = p.prepare(thin_scan)
    assert image.shape == (1, 3, 64, 64)
    r = p.finish(volume, image, 0.0, str(thin_scan))
    slab_vol = Volume(slab_max(vol.hu, 8), (5.0, *vol.spacing[1:]), vol.affine @ np.diag([1.0, 1.0, 8.0, 1.0]))
    np.testing.assert_array_equal(image, prepare_volume(slab_vol, p.bundle.prep))
    ref = Predictor(ichdet.load_bundle(scan_old), precision="fp32").predict(slab_vol)
    assert r.probability == ref.probability
    per_source = np.asarray(r.slice_probabilities)
    assert per_source.shape == (THIN_SLICES,)
    groups = [range(0, 16), range(16, 32), range(32, 48)]
    for k, g in enumerate(groups):
        assert set(per_source[list(g)]) == {ref.slice_probabilities[2 * k]}
    assert sorted(t["index"] for t in r.top_slices) == list(range(48))  # 3 top prepared slices = all 48 slices
    assert r.slabs == {"training_mm": 5.0, "series_mm": 0.625, "slices_per_slab": 8, "slab_mm": 5.0, "n_slices": 48,
                       "n_slabs": 6, "summary": "slices reformatted from 48 x 0.625 mm to 6 slabs of 5 mm (8 slices "
                                                "each, maximum HU; model trained on 5 mm)"}
    assert not any("thicker" in w for w in r.warnings)
    assert json.loads(json.dumps(r.to_dict()))["slabs"] == r.slabs
    assert f"note: {thin_scan}: slices reformatted from 48 x 0.625 mm to 6 slabs of 5 mm" in format_table([r])


def test_an_older_bundle_predicts_as_before(scan_old, bundles, thin_scan):
    """No thickness in the bundle: 48 slices through the 2x2x2 filter alone (24 prepared slices),
    no slabs field, the same numbers as the bundle's own preparation gives."""
    for path in (scan_old, bundles["scan"]):  # the key absent, or null
        p = Predictor(ichdet.load_bundle(path), precision="fp32")
        assert p.prep == p.bundle.prep and p.bundle.slice_thickness_mm is None
        vol = read_volume(thin_scan)
        volume, image = p.prepare(thin_scan)
        np.testing.assert_array_equal(image, prepare_volume(vol, p.bundle.prep))
        assert image.shape == (1, 24, 64, 64)
        r = p.finish(volume, image, 0.0, "thin")
        probability, per_slice, _ = p.score_labels(prepare_volume(vol, p.bundle.prep))
        assert r.probability == probability
        np.testing.assert_array_equal(r.slice_probabilities, np.repeat(per_slice, 2))
        assert r.slabs is None and r.to_dict()["slabs"] is None and "note:" not in format_table([r])


def test_at_the_training_thickness_nothing_changes_but_the_note(scan5, scan_old, cohort):
    """A 5 mm series with a 5 mm bundle: the same prediction as without a thickness, slices kept."""
    scan = sorted((cohort.parent / "scans").iterdir())[0]
    new = Predictor(ichdet.load_bundle(scan5), precision="fp32").predict(scan)
    old = Predictor(ichdet.load_bundle(scan_old), precision="fp32").predict(scan)
    assert (new.probability, new.slice_probabilities, new.top_slices) == (old.probability, old.slice_probabilities,
                                                                           old.top_slices)
    assert new.slabs["slices_per_slab"] == 1 and new.slabs["n_slabs"] == 8 == new.slabs["n_slices"]
    assert new.slabs["summary"] == "8 slices of 5 mm kept as they are (model trained on 5 mm)"
    assert new.warnings == old.warnings


def test_a_thicker_series_warns_and_goes_on(scan5, cohort):
    scan = read_volume(sorted((cohort.parent / "scans").iterdir())[0])
    thick = Volume(scan.hu, (10.0, *scan.spacing[1:]), scan.affine @ np.diag([1.0, 1.0, 2.0, 1.0]))
    r = Predictor(ichdet.load_bundle(scan5), precision="fp32").predict(thick)
    assert len(r.slice_probabilities) == 8 and r.slabs["slices_per_slab"] == 1
    assert ("slices are 10 mm apart, thicker than the 5 mm the model was trained on: it sees fewer slices than in "
            "training") in r.warnings
    at_limit = Volume(scan.hu, (7.5, *scan.spacing[1:]), scan.affine)
    assert not any("thicker" in w for w in Predictor(ichdet.load_bundle(scan5)).predict(at_limit).warnings)


def test_a_bare_array_is_never_merged(scan5, scan_old, thin_scan):
    hu = read_volume(thin_scan).hu
    new = Predictor(ichdet.load_bundle(scan5), precision="fp32").predict(hu)
    old = Predictor(ichdet.load_bundle(scan_old), precision="fp32").predict(hu)
    assert new.probability == old.probability and new.slabs is None and len(new.slice_probabilities) == 48


def test_predict_equals_evaluation_on_thin_scans(scan5, thin_manifest):
    """evaluate prepares a cohort with `bundle.input_prep`: the same slabs, the same scores."""
    b = ichdet.load_bundle(scan5)
    pc = PreparedCohort(thin_manifest, b.input_prep)
    ids = pc.scan_ids()
    assert pc[ids[0]].image.shape == (1, 3, 64, 64)
    ref, _ = score_scans(b.kind, b.model, pc, ids, b.context, b.aggregate, b.svm)
    p = Predictor(b, precision="fp32")
    got = [p.predict(pc.row(s).resolved_path(pc.root)).probability for s in ids]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_the_real_cq500_thin_series_becomes_15_prepared_slices(scan5, scan_old, cq500_dir):
    """CQ500-CT-1: 238 slices 0.618 mm apart -> 30 slabs of 8 (the last of 6) -> 15 prepared slices
    through the 2x2x2 filter (119 without slabs), each naming its 16 source slices."""
    p = Predictor(ichdet.load_bundle(scan5), precision="fp32")
    volume, image = p.prepare(cq500_dir)
    assert volume.shape == (238, 512, 512) and image.shape == (1, 15, 64, 64)
    r = p.finish(volume, image, 0.0, "CQ500-CT-1")
    assert r.slabs == {"training_mm": 5.0, "series_mm": 0.6181, "slices_per_slab": 8, "slab_mm": 4.9451,
                       "n_slices": 238, "n_slabs": 30,
                       "summary": "slices reformatted from 238 x 0.618 mm to 30 slabs of 4.95 mm (8 slices each, "
                                  "maximum HU; model trained on 5 mm)"}
    per_source = np.asarray(r.slice_probabilities)
    assert per_source.shape == (238,)
    starts = list(range(0, 238, 16))
    for a, b in zip(starts, starts[1:] + [238]):
        assert len(set(per_source[a:b])) == 1
    top = sorted(t["index"] for t in r.top_slices)
    assert len(top) in (48, 46) and all(t["file"].endswith(".dcm") for t in r.top_slices)
    old = Predictor(ichdet.load_bundle(scan_old), precision="fp32")
    assert old.prepare(volume)[1].shape == (1, 119, 64, 64)
