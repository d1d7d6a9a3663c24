"""Slabs of the training slice thickness (`ichdet.preprocess.slabs`): a thin series becomes runs of
k = round(training / spacing) slices merged by their maximum HU, composed with the 2x2x2 filter,
and `slice_map` names the source slices of every prepared slice."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ichdet.errors import InputError
from ichdet.io.volume import Volume
from ichdet.preprocess import (
    PrepSpec, SliceMap, merge_groups, prepare_volume, series_spacing, slab_max, slab_plan, slab_size, slice_map,
    z_block,
)
from ichdet.preprocess.slabs import UNKNOWN_GEOMETRY

WIDE = "0/4096"  # HU -> (HU + 2048) / 4096: every integer HU of -2048..2048 exactly, unclipped


def _thin(n: int = 42, dz: float = 0.625, size: int = 16, seed: int = 0) -> Volume:
    """n slices `dz` mm apart of random integer HU in -1000..1000."""
    hu = np.random.default_rng(seed).integers(-1000, 1001, size=(n, size, size)).astype(np.float32)
    return Volume(hu, (dz, 0.5, 0.5), np.diag([0.5, 0.5, dz, 1.0]))


def _hu(image: np.ndarray) -> np.ndarray:
    """The WIDE window's channel back to HU."""
    return image[0] * np.float32(4096) - np.float32(2048)


@pytest.mark.parametrize("spacing, target, k", [
    (0.625, 5.0, 8), (0.618, 5.0, 8), (1.25, 5.0, 4), (2.5, 5.0, 2), (2.0, 5.0, 3), (5.0, 5.0, 1), (4.0, 5.0, 1),
    (10.0, 5.0, 1), (0.625, None, 1), (None, 5.0, 1),
])
def test_slab_size_rounds_training_over_spacing(spacing, target, k):
    assert slab_size(spacing, target) == k


def test_a_0625_mm_series_becomes_slabs_of_8_slices_by_their_maximum():
    vol = _thin(42)
    spec = PrepSpec(windows=(WIDE,), size=16, slab_mm=5.0)
    image = prepare_volume(vol, spec)
    m = slice_map(vol, spec)
    assert m.groups == tuple(tuple(range(s, min(s + 8, 42))) for s in range(0, 42, 8))
    assert [len(g) for g in m.groups] == [8, 8, 8, 8, 8, 2] and image.shape == (1, 6, 16, 16)
    expected = np.stack([vol.hu[list(g)].max(axis=0) for g in m.groups])
    np.testing.assert_array_equal(_hu(image), expected)
    np.testing.assert_array_equal(slab_max(vol.hu, 8), expected)
    assert m.labels() == ["slices 0-7", "slices 8-15", "slices 16-23", "slices 24-31", "slices 32-39", "slices 40-41"]
    assert [m.prepared_of(i) for i in (0, 7, 8, 41)] == [0, 0, 1, 5]


@pytest.mark.parametrize("size", [16, 8])  # 16: z pairs only; 8: the one-pass 2x2x2 filter
def test_slabs_compose_with_the_z_max_filter(size):
    """0.625 mm slices -> slabs of 8 -> pairs of slabs: prepared slice j is the maximum of source
    slices 16j..16j+15 (the last group: what is left), and slice_map says so."""
    vol = _thin(42)
    spec = PrepSpec(windows=(WIDE,), size=size, z_max_filter=True, slab_mm=5.0)
    image = prepare_volume(vol, spec)
    m = slice_map(vol, spec)
    assert m.groups == (tuple(range(0, 16)), tuple(range(16, 32)), tuple(range(32, 42)))
    assert z_block(spec, 0.625) == 16 and image.shape == (1, 3, size, size)
    scale = 16 // size
    expected = merge_groups(vol.hu, m.groups, "max")  # (3, 16, 16)
    if scale > 1:
        expected = expected.reshape(3, size, scale, size, scale).max(axis=(2, 4))
    np.testing.assert_array_equal(_hu(image), expected)
    # the same as the 2x2x2 filter on the slab volume, and its map composed from the slabs' map
    slabs = Volume(slab_max(vol.hu, 8), (5.0, 0.5, 0.5), np.diag([0.5, 0.5, 5.0, 1.0]))
    np.testing.assert_array_equal(image, prepare_volume(slabs, dataclasses.replace(spec, slab_mm=None)))
    by_slab = slice_map(slabs, dataclasses.replace(spec, slab_mm=None)).groups  # ((0, 1), (2, 3), (4, 5))
    of_slab = slice_map(vol, dataclasses.replace(spec, z_max_filter=False)).groups
    assert m.groups == tuple(tuple(i for s in g for i in of_slab[s]) for g in by_slab)


def test_no_change_at_the_training_thickness_or_without_a_thickness():
    """k == 1 (5 mm series, 5 mm target), no target, a bare array, one slice, a placeholder
    geometry: the image and the map are those of the spec without slabs, bit for bit."""
    spec = PrepSpec(windows=("brain", WIDE), size=16, z_max_filter=True)
    slab = dataclasses.replace(spec, slab_mm=5.0)
    thick = _thin(7, dz=5.0)
    unknown = Volume(_thin(20, dz=1.0).hu, (1.0, 1.0, 1.0), np.eye(4), info={UNKNOWN_GEOMETRY: True})
    single = _thin(1, dz=0.625)
    for vol in (thick, unknown, single):
        np.testing.assert_array_equal(prepare_volume(vol, slab), prepare_volume(vol, spec))
        assert slice_map(vol, slab) == slice_map(vol, spec)
    np.testing.assert_array_equal(prepare_volume(_thin(20).hu, slab), prepare_volume(_thin(20).hu, spec))
    assert series_spacing(thick) == 5.0 and series_spacing(unknown) is None and series_spacing(single) is None


def test_the_spec_keeps_its_key_and_dict_without_a_thickness():
    spec = PrepSpec(windows=("brain",), size=256, z_max_filter=True)
    assert spec.to_dict() == {"windows": ["brain"], "size": 256, "max_filter": 2, "z_max_filter": True,
                              "crop_head": False}
    assert spec.key() == "brain_s256_mf2_z1_crop0"
    slab = dataclasses.replace(spec, slab_mm=5)
    assert slab.slab_mm == 5.0 and slab.key() == "brain_s256_mf2_z1_crop0_slab5"
    assert slab.to_dict() == {**spec.to_dict(), "slab_mm": 5.0}
    assert PrepSpec.from_dict(slab.to_dict()) == slab and PrepSpec.from_dict(spec.to_dict()) == spec
    for bad in (0, -1.0, float("nan"), "5", True):
        with pytest.raises(InputError, match="PrepSpec.slab_mm must be a positive number of mm or null"):
            PrepSpec(slab_mm=bad)


def test_the_plan_says_what_was_done_and_warns_on_thick_series():
    plan = slab_plan(_thin(238, dz=0.618), 5.0)
    assert (plan.per_slab, plan.n_slices, plan.n_slabs, plan.series_mm) == (8, 238, 30, 0.618)
    assert plan.summary() == ("slices reformatted from 238 x 0.618 mm to 30 slabs of 4.94 mm (8 slices each, "
                              "maximum HU; model trained on 5 mm)")
    assert plan.warning() is None
    assert plan.to_dict() == {"training_mm": 5.0, "series_mm": 0.618, "slices_per_slab": 8, "slab_mm": 4.944,
                              "n_slices": 238, "n_slabs": 30, "summary": plan.summary()}
    same = slab_plan(_thin(7, dz=5.0), 5.0)
    assert (same.per_slab, same.n_slabs, same.warning()) == (1, 7, None)
    assert same.summary() == "7 slices of 5 mm kept as they are (model trained on 5 mm)"
    assert slab_plan(_thin(7, dz=7.5), 5.0).warning() is None  # 1.5x: still as in training
    thick = slab_plan(_thin(7, dz=10.0), 5.0)
    assert thick.per_slab == 1 and thick.warning() == (
        "slices are 10 mm apart, thicker than the 5 mm the model was trained on: it sees fewer slices than in training")
    assert slab_plan(_thin(7), None) is None and slab_plan(_thin(1), 5.0) is None


def test_slice_map_of_a_slab_spec_is_a_valid_map():
    m = slice_map(_thin(238, dz=0.618), PrepSpec(size=16, z_max_filter=True, slab_mm=5.0))
    assert isinstance(m, SliceMap) and m.n_prepared == 15 and m.groups[-1] == tuple(range(224, 238))
