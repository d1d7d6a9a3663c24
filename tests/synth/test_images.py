"""ichdet.synth.images: a PNG image set (+ labels.csv) exported from a synthetic cohort."""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ichdet.datasets.manifest import read_manifest, read_slice_labels
from ichdet.errors import InputError
from ichdet.io import read_volume
from ichdet.preprocess.windows import BRAIN_WINDOW, window
from ichdet.synth import make_cohort
from ichdet.synth.images import export_image_set, pick_slice


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """12 scans (5 positive), 64 px, 8 slices; scans 8 and 9 share a patient."""
    return make_cohort(tmp_path_factory.mktemp("img_cohort"), 12, seed=3, size=64, n_slices=8, difficulty=0.2)


@pytest.fixture(scope="module")
def exported(cohort, tmp_path_factory) -> Path:
    return export_image_set(cohort, tmp_path_factory.mktemp("img_set"), seed=4)


def _labels(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _expected_picks(manifest: Path, seed: int) -> dict[str, int]:
    """The slice each scan's image shows, drawn as export_image_set draws it."""
    rng = np.random.default_rng(seed)
    labels = read_slice_labels(manifest.parent / "slice_labels.csv")
    return {r.scan_id: pick_slice([s.label for s in labels[r.scan_id]], bool(r.label), rng)
            for r in read_manifest(manifest)}


def test_pick_slice():
    rng = np.random.default_rng(0)
    assert pick_slice([0, 0, 1, 1, 1, 0], True, rng) == 3  # middle of the bleed run
    assert pick_slice([0, 1, 1, 1, 1, 0], True, rng) == 3  # even run: the upper middle
    picks = {pick_slice([0] * 9, False, rng) for _ in range(200)}
    assert picks == {3, 4, 5}  # the middle third
    assert pick_slice([0] * 9, True, rng) in {3, 4, 5}  # positive scan without bleed slices
    assert pick_slice([0], False, rng) == 0


def test_one_png_per_scan_and_labels_csv(cohort, exported):
    rows = read_manifest(cohort)
    out = exported.parent
    assert exported == out / "labels.csv"
    assert exported.read_text().splitlines()[0] == "id,patient,hemorrhage"
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{r.scan_id}.png" for r in rows)
    recs = _labels(exported)
    assert [(r["id"], r["patient"]) for r in recs] == [(r.scan_id, r.patient_id) for r in rows]
    assert recs[8]["patient"] == recs[9]["patient"]  # the shared patient travels with both images
    slice_labels = read_slice_labels(cohort.parent / "slice_labels.csv")
    picks = _expected_picks(cohort, 4)
    for rec, row in zip(recs, rows):
        sl = slice_labels[row.scan_id]
        assert int(rec["hemorrhage"]) == sl[picks[row.scan_id]].label  # the image's label is its slice's
        if row.label:
            assert int(rec["hemorrhage"]) == 1 and sl[picks[row.scan_id]].label == 1
        else:
            assert int(rec["hemorrhage"]) == 0
    assert sum(int(r["hemorrhage"]) for r in recs) == sum(r.label for r in rows) == 5
    # images come in many canvas sizes, grey or RGB, like images collected from many sources
    sizes = [Image.open(out / "images" / f"{r.scan_id}.png").size for r in rows]
    modes = {Image.open(out / "images" / f"{r.scan_id}.png").mode for r in rows}
    assert len(set(sizes)) >= 10 and all(180 <= max(s) <= 540 for s in sizes)
    assert modes == {"L", "RGB"}


def test_plain_export_shows_the_chosen_slice(cohort, exported, tmp_path):
    labels = export_image_set(cohort, tmp_path, seed=4, vary=False)
    picks = _expected_picks(cohort, 4)
    for row in read_manifest(cohort):
        vol = read_volume(row.resolved_path(cohort.parent))
        img = np.asarray(Image.open(tmp_path / "images" / f"{row.scan_id}.png"))
        assert img.shape == (64, 64) and img.dtype == np.uint8
        expected = np.round(window(vol.hu[picks[row.scan_id]], BRAIN_WINDOW) * 255).astype(np.uint8)
        np.testing.assert_array_equal(img, expected)
    assert labels.read_text() == exported.read_text()  # same seed, same slices, same labels


def test_rerun_keeps_existing_pngs(cohort, tmp_path):
    first = export_image_set(cohort, tmp_path, seed=2, limit=4)
    pngs = sorted((tmp_path / "images").glob("*.png"))
    assert len(pngs) == 4 and len(_labels(first)) == 4
    old = 1_000_000_000  # set an old mtime: a rewrite would change it
    for p in pngs:
        os.utime(p, (old, old))
    content = {p: p.read_bytes() for p in pngs}
    text = first.read_text()
    again = export_image_set(cohort, tmp_path, seed=2, limit=4)
    assert again.read_text() == text
    for p in pngs:
        assert p.stat().st_mtime == old and p.read_bytes() == content[p]
    # a missing image is written again, the others stay untouched
    pngs[1].unlink()
    export_image_set(cohort, tmp_path, seed=2, limit=4)
    assert pngs[1].is_file() and pngs[1].read_bytes() == content[pngs[1]]
    assert all(p.stat().st_mtime == old for p in pngs if p != pngs[1])


def test_cohort_without_slice_labels(cohort, tmp_path):
    copy = tmp_path / "c"
    copy.mkdir()
    shutil.copy(cohort, copy / "manifest.csv")
    with pytest.raises(InputError) as e:
        export_image_set(copy / "manifest.csv", tmp_path / "out")
    assert "the cohort has no slice_labels.csv to pick bleed slices from" in str(e.value)
    assert str(e.value) == f"{copy}: the cohort has no slice_labels.csv to pick bleed slices from"
