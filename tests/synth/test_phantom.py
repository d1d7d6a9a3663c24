"""The head phantom: tissue densities, anatomy layout, geometry, mass effect, determinism."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ichdet.errors import InputError
from ichdet.preprocess import cranial_slices
from ichdet.synth import generate_scan
from ichdet.synth.grid import Pose, SampleGrid, ScanGeometry, upsample_linear
from ichdet.synth.head import Tissue, sample_head
from ichdet.synth.phantom import Warp, render_anatomy
from ichdet.synth.scan import synthesize


@pytest.fixture(scope="module")
def negative_scan():
    return synthesize(11, size=256, n_slices=30, slice_thickness=5.0, difficulty=0.0, positive=False)


def _mean_hu(scan, tissue: Tissue, erode: int = 1) -> float:
    m = scan.tissue == tissue
    if erode:
        m = ndimage.binary_erosion(m, np.ones((1, 2 * erode + 1, 2 * erode + 1), bool))
    assert m.sum() > 50, f"too few {tissue.name} voxels"
    return float(scan.volume.hu[m].mean())


def test_tissue_densities_are_those_of_head_ct(negative_scan):
    s = negative_scan
    assert abs(_mean_hu(s, Tissue.AIR, 2) + 1000) < 15
    assert 20 <= _mean_hu(s, Tissue.WM, 2) <= 30
    assert 33 <= _mean_hu(s, Tissue.DEEP_GM, 1) <= 45
    assert 30 <= _mean_hu(s, Tissue.GM, 0) <= 45  # a thin ribbon: partial volume with WM and CSF
    assert 0 <= _mean_hu(s, Tissue.VENTRICLE, 1) <= 15
    bone = s.volume.hu[s.tissue == Tissue.BONE]
    assert np.median(bone) > 700 and bone.max() > 1200
    assert s.meta["label"] == 0 and not s.mask.any()


def test_slices_run_from_skull_base_to_vertex(negative_scan):
    s = negative_scan
    brain = np.isin(s.tissue, [Tissue.GM, Tissue.WM, Tissue.DEEP_GM, Tissue.VENTRICLE]).sum(axis=(1, 2))
    assert brain[0] < 0.2 * brain.max() and brain[-1] < 0.3 * brain.max()
    assert np.argmax(brain) not in (0, len(brain) - 1)
    assert s.tissue[0][s.tissue[0] == Tissue.BRAINSTEM].size > 0 or brain[0] == 0
    cranial = cranial_slices(s.volume.hu, s.volume.spacing)
    assert cranial[len(cranial) // 2] and not cranial.all()


def test_falx_is_midline_and_dense(negative_scan):
    s = negative_scan
    falx = s.tissue == Tissue.FALX
    assert falx.sum() > 100
    cols = np.nonzero(falx)[2]
    head_cols = np.nonzero(s.tissue[len(s.tissue) // 2] != Tissue.AIR)[1]
    assert abs(np.median(cols) - np.median(head_cols)) < 15  # pixels at ~0.95 mm
    assert s.volume.hu[falx].mean() > s.volume.hu[s.tissue == Tissue.WM].mean() + 10


def test_mass_effect_pushes_the_falx_away():
    head = sample_head(np.random.default_rng(5))
    grid = SampleGrid(ScanGeometry(8, 128, 5.0, 1.8), Pose(0, 0, 0, (0.0, 0.0, -10.0)))  # head z 10..45 mm
    plain = render_anatomy(grid, head)
    pushed = render_anatomy(grid, head, [Warp(np.array([-45.0, 0.0, 30.0]), 25.0, 10.0)])
    col = lambda a: np.nonzero(a.tissue[:, 54:75] == Tissue.FALX)[2].mean()  # rows within ~20 mm of the bleed  # noqa: E731
    assert col(pushed) > col(plain) + 1.5  # pushed ~3-4 mm toward patient left (larger column)
    bone = lambda a: a.tissue == Tissue.BONE  # noqa: E731
    assert np.array_equal(bone(plain), bone(pushed))  # the skull does not move


def test_scans_vary_and_are_deterministic():
    a1, _, m1 = generate_scan(np.random.default_rng([4, 0]), size=64, n_slices=8, slice_thickness=10.0)
    a2, _, m2 = generate_scan(np.random.default_rng([4, 0]), size=64, n_slices=8, slice_thickness=10.0)
    b, _, _ = generate_scan(np.random.default_rng([4, 1]), size=64, n_slices=8, slice_thickness=10.0)
    assert np.array_equal(a1.hu, a2.hu) and m1 == m2
    assert not np.array_equal(a1.hu, b.hu)
    assert a1.hu.dtype == np.float32 and a1.shape == (8, 64, 64)
    assert a1.spacing[0] == 10.0 and np.allclose(a1.affine[:3, 2], [0, 0, 10.0])
    assert a1.gantry_tilt_deg == 0.0  # tilt lives in the data, the files look like plain axial CT


def test_render_grid_upsampling_matches_scipy():
    a = np.random.default_rng(0).normal(size=(2, 9, 11)).astype(np.float32)
    for f in (2, 3):
        ref = ndimage.zoom(a, (1, f, f), order=1, grid_mode=True, mode="nearest")
        assert np.allclose(upsample_linear(a, f), ref, atol=1e-5)


@pytest.mark.parametrize("kwargs, text", [({"difficulty": 1.5}, "difficulty must be in [0, 1], got 1.5"),
                                          ({"size": 8}, "size must be >= 16"),
                                          ({"subtypes": ["chronic"]}, "chronic")])
def test_bad_arguments_are_named(kwargs, text):
    with pytest.raises(InputError, match=text.replace("[", r"\[").replace("]", r"\]")):
        generate_scan(0, **{"size": 64, "n_slices": 4, **kwargs})
