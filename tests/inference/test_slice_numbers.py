"""`predict` names the input's own slices through the preprocessing's `SliceMap`: per-slice
probabilities, top slices (index, z_mm, file) and heatmap file names, with and without the
2x2x2 filter, for an odd number of slices (the last one stands alone)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import ichdet
from ichdet.io import read_volume
from ichdet.preprocess import slice_map


@pytest.fixture(scope="module")
def odd_scan(cohort, tmp_path_factory) -> Path:
    """The first cohort scan without its most superior slice: 7 DICOM files."""
    scan = tmp_path_factory.mktemp("odd") / "scan"
    shutil.copytree(sorted((cohort.parent / "scans").iterdir())[0], scan)
    (scan / Path(read_volume(scan).source[-1]).name).unlink()
    return scan


@pytest.mark.parametrize("kind, groups, labels", [
    ("scan", [(0, 1), (2, 3), (4, 5), (6,)], ["slices 0-1", "slices 2-3", "slices 4-5", "slice 6"]),  # 2x2x2 filter
    ("slice", [(i,) for i in range(7)], [f"slice {i}" for i in range(7)]),
])
def test_an_odd_scan_is_reported_in_its_own_slices(bundles, odd_scan, tmp_path, kind, groups, labels):
    p = ichdet.load_predictor(bundles[kind], top_k=7)
    volume, image = p.prepare(odd_scan)
    _, prepared = p.score(image)
    r = p.predict(odd_scan, heatmaps=tmp_path / "hm")
    assert volume.shape[0] == 7 and image.shape[1] == len(groups) == len(prepared)
    assert r.slice_probabilities == [float(prepared[k]) for k, g in enumerate(groups) for _ in g]
    order = np.lexsort((np.arange(len(prepared)), -prepared))  # most suspicious first, ties: lower first
    assert [t["index"] for t in r.top_slices] == [i for k in order for i in groups[k]]
    for t in r.top_slices:
        assert t["probability"] == r.slice_probabilities[t["index"]]
        assert t["z_mm"] == round(float((volume.affine @ np.array([0.0, 0.0, t["index"], 1.0]))[2]), 3)
        assert t["file"] == Path(volume.source[t["index"]]).name
    assert slice_map(volume, p.bundle.prep).labels() == labels
    files = [f"slice_{g[0]:03d}.png" if len(g) == 1 else f"slices_{g[0]:03d}-{g[1]:03d}.png" for g in groups]
    assert sorted(f.name for f in (tmp_path / "hm").iterdir()) == sorted(files + ["contact_sheet.png"])


def test_a_prepared_image_of_another_geometry_is_refused(bundles, odd_scan):
    p = ichdet.load_predictor(bundles["scan"])
    volume, image = p.prepare(odd_scan)
    with pytest.raises(ValueError, match=r"must be \(C, 4, S, S\) with this bundle's preprocessing, got shape "
                                         r"\(1, 7, 64, 64\)"):
        p.finish(volume, np.repeat(image, 2, axis=1)[:, :7], 0.0, "x")
