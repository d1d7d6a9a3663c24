"""Bleed volumes in mL and ABC/2 on hand-made shapes of known size."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ichdet.errors import InputError
from ichdet.measure import abc2, diameters_mm, label_volumes_ml, largest_lesion, slice_weights, voxel_ml

# an ellipsoid of semi-axes 20 (z), 25 (y), 15 (x) mm on an anisotropic grid, centred on voxel boundaries
SEMI = (20.0, 25.0, 15.0)  # mm
SPACING = (2.0, 0.25, 0.3)  # (dz, dy, dx) mm
SHAPE = (24, 240, 120)  # 48 x 60 x 36 mm
ELLIPSOID_ML = 4 / 3 * math.pi * SEMI[0] * SEMI[1] * SEMI[2] / 1000


def ellipsoid(shape=SHAPE, spacing=SPACING, semi=SEMI, label=1) -> np.ndarray:
    """uint8 (Z, H, W): `label` where a voxel's centre lies inside the ellipsoid centred in the grid."""
    axes = [((np.arange(n) + 0.5) * s - n * s / 2) / a for n, s, a in zip(shape, spacing, semi)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return np.where(z**2 + y**2 + x**2 < 1, label, 0).astype(np.uint8)


def test_ellipsoid_volume_per_label_within_2_percent_of_four_thirds_pi_abc():
    vols = label_volumes_ml(ellipsoid(label=3), SPACING)
    assert vols["intraventricular"] == pytest.approx(ELLIPSOID_ML, rel=0.02)
    assert vols["total"] == vols["intraventricular"]
    assert [vols[k] for k in ("epidural", "intraparenchymal", "subarachnoid", "subdural")] == [0.0] * 4


def test_abc2_over_all_slices_reads_three_over_pi_of_an_ellipsoid():
    """A·B·C/2 against the ellipsoid's A·B·C·π/6: ABC/2 is 3/π ≈ 0.955 of it (π taken as 3); the pixels'
    staircase outline adds under 1 %."""
    est = abc2(ellipsoid(), SPACING, c_rule="all_slices")
    assert est.c_mm == 40.0  # 20 slices of 2 mm: the full height 2 × 20 mm
    assert est.a_mm == pytest.approx(50.0, abs=0.25)  # within a pixel
    assert est.b_mm == pytest.approx(30.0, abs=0.3)
    assert est.slice_index == 11  # the two central slices tie; the more inferior one
    assert est.lesion_voxels == int(ellipsoid().sum())
    assert est.volume_ml / ELLIPSOID_ML == pytest.approx(3 / math.pi, rel=0.015)
    assert est.volume_ml / ELLIPSOID_ML < 0.975  # below the true volume by about 1 - 3/π


def test_abc2_kothari_weights_the_ellipsoids_slices_by_area():
    """Areas relative to the largest slice: |z| <= 9 mm are >= 75 % (10 slices count 1), 11-17 mm
    25-75 % (8 slices count 0.5), 19 mm below 25 % (none): C = 14 slices × 2 mm."""
    full = abc2(ellipsoid(), SPACING, c_rule="all_slices")
    est = abc2(ellipsoid(), SPACING)
    assert est.c_mm == 28.0
    assert (est.a_mm, est.b_mm, est.slice_index) == (full.a_mm, full.b_mm, full.slice_index)
    assert est.volume_ml == pytest.approx(full.volume_ml * 0.7, rel=1e-12)
    assert est.volume_ml / ELLIPSOID_ML == pytest.approx(0.7 * 3 / math.pi, rel=0.015)


def test_abc2_measures_the_larger_of_two_lesions():
    """Lesion 1: one slice of 30×30 px (900 voxels, the largest single slice); lesion 2: 5 slices of 20×10 px
    (1000 voxels). ABC/2 takes lesion 2. Its outline through the pixels' edge midpoints is the octagon
    (y, x) = (0, 0.5), (0, 9.5), (0.5, 10), (19.5, 10), (20, 9.5), (20, 0.5), (19.5, 0), (0.5, 0) (+ offset):
    A = (0, 0.5) to (20, 9.5) = √481; across it, along (-9, 20)/√481, the octagon spans 195.5 - (-175.5)
    = 371 / √481; so A·B = 371 mm² and A·B·C/2 = 371 × 5 / 2 mm³."""
    mask = np.zeros((8, 64, 64), np.uint8)
    mask[1, 2:32, 2:32] = 2
    mask[3:8, 40:60, 40:50] = 5
    est = abc2(mask, (1.0, 1.0, 1.0))
    assert est.lesion_voxels == 1000 and est.slice_index == 3
    assert est.a_mm == pytest.approx(math.sqrt(481))
    assert est.b_mm == pytest.approx(371 / math.sqrt(481))
    assert est.c_mm == 5.0
    assert est.volume_ml == pytest.approx(0.9275)
    assert largest_lesion(mask).sum() == 1000


def test_diameters_of_one_pixel_are_its_sides():
    assert diameters_mm(np.ones((1, 1), bool), 0.5, 0.8) == pytest.approx((0.8, 0.5))
    assert diameters_mm(np.ones((3, 1), bool), 0.5, 0.8) == pytest.approx((1.5, 0.8))


def test_kothari_slice_weights():
    areas = np.array([10, 80, 100, 75, 74, 25, 24, 0])
    assert slice_weights(areas).tolist() == [0.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.0, 0.0]
    assert slice_weights(areas, "all_slices").tolist() == [1.0] * 7 + [0.0]
    with pytest.raises(InputError, match=r"^unknown ABC/2 C rule 'kwak'; use 'kothari' or 'all_slices'$"):
        slice_weights(areas, "kwak")


def test_empty_mask_gives_zero_volume_and_no_diameters():
    est = abc2(np.zeros((3, 4, 4), np.uint8), (5.0, 0.5, 0.5))
    assert est.volume_ml == 0.0 and est.lesion_voxels == 0 and est.slice_index is None
    assert math.isnan(est.a_mm) and math.isnan(est.b_mm) and math.isnan(est.c_mm)
    assert est.as_dict() == {"volume_ml": 0.0, "a_mm": None, "b_mm": None, "c_mm": None, "slice_index": None,
                             "lesion_voxels": 0}
    assert label_volumes_ml(np.zeros((3, 4, 4), np.uint8), (5.0, 0.5, 0.5))["total"] == 0.0


def test_labels_split_per_subtype():
    mask = np.zeros((4, 10, 10), np.uint8)
    mask[0, :1, :] = 1   # 10 voxels epidural
    mask[1, :2, :] = 3   # 20 intraventricular
    mask[2, 0, :5] = 5   # 5 subdural
    vols = label_volumes_ml(mask, (2.0, 0.5, 0.5))  # 0.5 mm^3 = 0.0005 mL per voxel
    assert voxel_ml((2.0, 0.5, 0.5)) == pytest.approx(0.0005)
    assert vols == pytest.approx({"epidural": 0.005, "intraparenchymal": 0.0, "intraventricular": 0.01,
                                  "subarachnoid": 0.0, "subdural": 0.0025, "total": 0.0175})
    assert list(vols) == ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "total"]


def test_bad_masks_and_spacings_are_refused_with_one_line():
    mask = np.zeros((2, 4, 4), np.uint8)
    mask[1, 2, 3] = 7
    with pytest.raises(InputError) as e:
        label_volumes_ml(mask, (1, 1, 1), path="masks/s1.nii.gz")
    assert str(e.value) == ("masks/s1.nii.gz: label mask holds value 7 at voxel (z=1, y=2, x=3); labels are 0 (no "
                            "bleed) and 1..5 (epidural, intraparenchymal, intraventricular, subarachnoid, subdural)")
    with pytest.raises(InputError, match=r"^label mask holds value -1 at voxel \(z=0, y=0, x=1\);"):
        label_volumes_ml(np.array([[[0, -1]]], np.int16), (1, 1, 1))
    with pytest.raises(InputError, match=r"^label mask holds non-integer value 0.5 at voxel \(z=0, y=0, x=0\)$"):
        label_volumes_ml(np.full((1, 1, 1), 0.5), (1, 1, 1))
    with pytest.raises(InputError, match=r"^label mask must have shape \(Z, H, W\), got shape \(4, 4\)$"):
        label_volumes_ml(np.zeros((4, 4), np.uint8), (1, 1, 1))
    with pytest.raises(InputError,
                       match=r"^spacing must be three positive numbers \(dz, dy, dx\) in mm, got \(1, 0, 1\)$"):
        label_volumes_ml(mask * 0, (1, 0, 1))
    with pytest.raises(InputError, match=r"^spacing must be three numbers \(dz, dy, dx\) in mm, got 'abc'$"):
        abc2(mask, "abc")
    assert label_volumes_ml(np.ones((1, 2, 2), np.float32) * 2, (1, 1, 1))["intraparenchymal"] == 0.004


def _diameters_all_points(region, dy, dx):
    """A and B from the hull of every pixel's four edge midpoints (no pruning): the reference."""
    from scipy.spatial import ConvexHull

    r, c = np.nonzero(region)
    pts = np.unique(np.concatenate([np.stack([(r + i) * dy, (c + j) * dx], 1)
                                    for i, j in ((0, .5), (1, .5), (.5, 0), (.5, 1))]), axis=0)
    hull = pts[ConvexHull(pts).vertices]
    d = np.linalg.norm(hull[:, None] - hull[None], axis=-1)
    i, j = np.unravel_index(int(np.argmax(d)), d.shape)
    normal = np.array([-(hull[j, 1] - hull[i, 1]), hull[j, 0] - hull[i, 0]]) / d[i, j]
    proj = hull @ normal
    return float(d[i, j]), float(proj.max() - proj.min())


@pytest.mark.parametrize("seed", range(6))
def test_diameters_use_only_each_rows_outermost_pixels(seed):
    """Pruning to each row's first and last pixel keeps the hull: A and B equal the all-points reference,
    on ragged regions whose rows have gaps."""
    rng = np.random.default_rng(seed)
    region = rng.random((30, 40)) < 0.15
    region[rng.integers(0, 30), :] = False                     # an empty row inside the region
    dy, dx = (0.45, 0.45) if seed % 2 else (0.5, 0.8)
    assert diameters_mm(region, dy, dx) == pytest.approx(_diameters_all_points(region, dy, dx), rel=1e-12)
