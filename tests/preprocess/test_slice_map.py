"""`slice_map` / `SliceMap`: which source slices each prepared slice covers (the same rule as
`prepare_volume`'s 2x2x2 filter), their z positions from the affine and their files."""
from __future__ import annotations

import numpy as np
import pytest

from ichdet.io.volume import Volume
from ichdet.preprocess import PrepSpec, SliceMap, prepare_volume, slice_map


def _dots(n: int, size: int) -> Volume:
    """n slices of air, slice i with one bright dot of its own at row i, column 2 * i."""
    hu = np.full((n, size, size), -1000.0, dtype=np.float32)
    for i in range(n):
        hu[i, i, 2 * i] = 1000.0
    return Volume(hu, (5.0, 1.0, 1.0), np.eye(4))


def _labels_as_before(n_slices: int, n_prepared: int) -> list[str]:
    """The labels `prepared_slice_labels` wrote before the map existed (inference/predictor.py)."""
    merged = n_prepared != n_slices
    return [f"slices {2 * k}-{2 * k + 1}" if merged and 2 * k + 1 < n_slices else f"slice {2 * k if merged else k}"
            for k in range(n_prepared)]


@pytest.mark.parametrize("n", [6, 7])
def test_without_the_z_filter_every_slice_is_its_own(n):
    vol = _dots(n, 16)
    m = slice_map(vol, PrepSpec(size=16))
    assert m.groups == tuple((i,) for i in range(n)) and not m.merged
    assert m.n_source == m.n_prepared == prepare_volume(vol, PrepSpec(size=16)).shape[1] == n
    assert m.labels() == [f"slice {i}" for i in range(n)] == _labels_as_before(n, n)
    assert [m.prepared_of(i) for i in range(n)] == list(range(n))
    values = np.linspace(0.1, 0.9, n)
    np.testing.assert_array_equal(m.spread(values), values)
    assert m.collect(list(values)) == list(values)


@pytest.mark.parametrize("n, groups, labels", [
    (6, ((0, 1), (2, 3), (4, 5)), ["slices 0-1", "slices 2-3", "slices 4-5"]),
    (7, ((0, 1), (2, 3), (4, 5), (6,)), ["slices 0-1", "slices 2-3", "slices 4-5", "slice 6"]),
])
@pytest.mark.parametrize("size", [16, 8])  # 16: z pairs only (no in-plane filter); 8: one 2x2x2 pass
def test_the_z_filter_merges_pairs_as_prepare_volume_does(n, groups, labels, size):
    vol = _dots(n, 16)
    spec = PrepSpec(size=size, z_max_filter=True)
    m = slice_map(vol, spec)
    assert m.groups == groups and m.merged and m.n_source == n
    assert m.labels() == labels == _labels_as_before(n, len(groups))
    assert [m.prepared_of(i) for i in range(n)] == [i // 2 for i in range(n)]
    assert [m.sources(k) for k in range(m.n_prepared)] == list(groups)
    image = prepare_volume(vol, spec)
    assert image.shape[1] == m.n_prepared
    scale = 16 // size
    for k, g in enumerate(groups):  # prepared slice k shows the dots of exactly its source slices
        bright = {tuple(int(v) for v in rc) for rc in np.argwhere(image[0, k] == 1.0)}
        assert bright == {(i // scale, 2 * i // scale) for i in g}
    np.testing.assert_array_equal(m.spread(np.arange(len(groups)) + 0.5), [i // 2 + 0.5 for i in range(n)])
    per_source = [float(v) for v in m.spread(np.array([0.3, 0.1, 0.7, 0.2][:len(groups)]))]
    assert m.collect(per_source) == [0.3, 0.1, 0.7, 0.2][:len(groups)]


@pytest.mark.parametrize("n", range(1, 10))
def test_labels_equal_the_old_rule_for_any_length(n):
    for z_filter in (False, True):
        m = slice_map(_dots(n, 20), PrepSpec(size=20, z_max_filter=z_filter))
        assert m.labels() == _labels_as_before(n, m.n_prepared)


def test_a_display_image_is_one_slice_even_with_the_z_filter():
    img = Volume(np.full((1, 12, 12), 0.5, np.float32), (1.0, 1.0, 1.0), np.eye(4), source=["/x/a.png"],
                 info={"units": "display"})
    m = slice_map(img, PrepSpec(size=8, z_max_filter=True))
    assert m.groups == ((0,),) and m.labels() == ["slice 0"] and m.files is None
    assert prepare_volume(img, PrepSpec(size=8, z_max_filter=True)).shape[1] == 1


def test_z_positions_come_from_the_affine():
    affine = np.array([[0.45, 0.0, 0.0, -110.2],
                       [0.0, 0.45, 0.3, -95.0],
                       [0.0, 0.07, 2.5004, -13.3372],  # a tilted, not quite regular grid
                       [0.0, 0.0, 0.0, 1.0]])
    vol = Volume(np.zeros((5, 8, 8), np.float32), (2.5, 0.45, 0.45), affine)
    m = slice_map(vol, PrepSpec(size=8, z_max_filter=True))
    assert m.z_mm == tuple(round(float((affine @ np.array([0.0, 0.0, i, 1.0]))[2]), 3) for i in range(5))
    assert m.z_mm == (-13.337, -10.837, -8.336, -5.836, -3.336)
    assert all(isinstance(z, float) for z in m.z_mm)


def test_files_where_the_volume_has_one_per_slice():
    hu = np.zeros((3, 8, 8), np.float32)
    series = Volume(hu, (5.0, 1.0, 1.0), np.eye(4), source=["/data/s/IM3.dcm", "/data/s/IM1.dcm", "/data/s/IM2.dcm"])
    assert slice_map(series).files == ("IM3.dcm", "IM1.dcm", "IM2.dcm")  # in slice order, names only
    nifti = Volume(hu, (5.0, 1.0, 1.0), np.eye(4), source=["/data/scan.nii.gz"])
    assert slice_map(nifti).files is None
    assert slice_map(Volume(hu, (5.0, 1.0, 1.0), np.eye(4))).files is None  # a bare array


def test_bad_values_are_named():
    m = SliceMap.of_volume(_dots(5, 16), 2)
    with pytest.raises(ValueError, match=r"expected 3 values, one per prepared slice, got shape \(5,\)"):
        m.spread(np.zeros(5))
    with pytest.raises(ValueError, match="expected 5 values, one per source slice, got 3"):
        m.collect([0.0, 0.0, 0.0])
    with pytest.raises(IndexError, match="source slice 5 is outside the volume's 5 slices"):
        m.prepared_of(5)
    with pytest.raises(ValueError, match="must split source slices 0..2 in order"):
        SliceMap(((0,), (2, 1)), (0.0, 1.0, 2.0))
    with pytest.raises(ValueError, match="must name 2 source slices, got 1"):
        SliceMap(((0, 1),), (0.0, 1.0), ("a.dcm",))
    with pytest.raises(ValueError, match="block must be a positive integer, got 0"):
        SliceMap.of_volume(_dots(2, 16), 0)
