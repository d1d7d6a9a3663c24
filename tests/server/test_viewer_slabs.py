"""The viewer shows a thin series as the model saw it: in slabs of the bundle's training slice
thickness, display slice k = prepared slice k, labelled with the source slices it covers."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

import ichdet
from ichdet.engine.bundle import META
from ichdet.preprocess import window
from ichdet.server.scans import PRESETS, open_scan, to_uint8
from ichdet.synth import make_cohort


def test_a_thin_series_is_shown_in_slabs_of_the_training_thickness(scan_bundle, tmp_path):
    bundle = shutil.copytree(scan_bundle, tmp_path / "bundle")
    meta = json.loads((bundle / META).read_text())
    (bundle / META).write_text(json.dumps({**meta, "slice_thickness_mm": 5.0}))
    manifest = make_cohort(tmp_path / "thin", 1, seed=4, size=64, n_slices=40, slice_thickness=0.625)
    series = next((manifest.parent / "scans").iterdir())
    predictor = ichdet.load_predictor(bundle, precision="fp32")
    study = open_scan(predictor, series, "thin series")
    assert study.image.shape == (1, 3, 64, 64) and study.n_slices == 3  # 40 slices -> 5 slabs -> 3 pairs
    assert all(study.displays[w].shape == (3, 64, 64) for w in PRESETS) and study.hu.shape == (3, 64, 64)
    assert study.slice_labels == ["slices 0-15", "slices 16-31", "slices 32-39"]
    assert len(study.slice_probabilities) == 3 and len(study.prediction.slice_probabilities) == 40
    assert study.prediction.slabs["slices_per_slab"] == 8 and study.prediction.slabs["n_slabs"] == 5
    # the display stacks are the model's input geometry: its brain window, and HU that window to it
    expected = predictor.prepare(series)[1][0]  # the model's brain window of the same slabs
    np.testing.assert_array_equal(study.displays["brain"], to_uint8(expected))
    np.testing.assert_allclose(window(study.hu, "brain"), expected, rtol=0, atol=2e-4)
