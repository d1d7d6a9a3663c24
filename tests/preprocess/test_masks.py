"""Label masks: onto the prepared grid and back (labels and volumes survive), read onto the
scan's voxel grid whatever the stored orientation, and refused, in one line, when their shape is
not the scan's."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ichdet.datasets.manifest import ManifestRow
from ichdet.datasets.masks import prepared_mask
from ichdet.errors import InputError
from ichdet.io import write_nifti
from ichdet.io.masks import UNKNOWN_SUBTYPE, mask_targets, read_mask
from ichdet.io.volume import Volume
from ichdet.preprocess import PrepSpec, prepare_volume
from ichdet.preprocess.masks import check_seg_spec, crop_box, prepare_mask, restore_mask, restore_probabilities

SPACING = (5.0, 0.5, 0.5)  # mm


def _ellipsoid(shape, centre, axes_mm, spacing=SPACING) -> np.ndarray:
    z, y, x = np.indices(shape, dtype=np.float64)
    r = sum(((g - c) * s / a) ** 2 for g, c, s, a in zip((z, y, x), centre, spacing, axes_mm))
    return r <= 1.0


def _blobs(shape=(8, 200, 240)) -> np.ndarray:
    """Two bleeds: intraparenchymal (label 2) of 4.6 mL and subdural (label 5) of 3.3 mL."""
    mask = np.zeros(shape, np.uint8)
    mask[_ellipsoid(shape, (3.5, 90, 100), (11, 11, 9))] = 2
    mask[_ellipsoid(shape, (4, 150, 190), (9, 6, 15))] = 5
    return mask


def _one_hot(prepared: np.ndarray) -> np.ndarray:
    return (np.arange(6)[:, None, None, None] == prepared[None]).astype(np.float32)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("spec", [PrepSpec(windows=("brain",), size=128, max_filter=2),  # k 2, pad, enlarge
                                  PrepSpec(windows=("brain",), size=64, max_filter=1)])  # pad, shrink by area
def test_round_trip_keeps_labels_and_volumes(spec):
    mask = _blobs()
    voxel_ml = np.prod(SPACING) / 1000
    assert (mask == 2).sum() * voxel_ml == pytest.approx(4.62) and (mask == 5).sum() * voxel_ml == pytest.approx(3.30875)
    prepared = prepare_mask(mask, spec)
    assert prepared.shape == (8, spec.size, spec.size) and prepared.dtype == np.uint8
    assert set(np.unique(prepared)) == {0, 2, 5}
    back = restore_mask(_one_hot(prepared), mask.shape, spec)
    assert back.shape == mask.shape and back.dtype == np.uint8 and set(np.unique(back)) == {0, 2, 5}
    for label in (2, 5):
        assert _dice(back == label, mask == label) > 0.95
        assert abs((back == label).sum() / (mask == label).sum() - 1) < 0.05  # the volume in mL within 5%


def _grid_sample_reference(p, shape, spec, box):
    """The resampling restore_probabilities does, written as one torch grid_sample (bilinear,
    align_corners False, border padding) at the centre of every original pixel of the box."""
    import math

    import torch
    import torch.nn.functional as F

    r0, r1, c0, c1 = box
    h, w = r1 - r0, c1 - c0
    k = spec.max_filter if max(h, w) > spec.size else 1
    hk, wk = math.ceil(h / k), math.ceil(w / k)
    side = max(hk, wk)
    gy = (((torch.arange(h, dtype=torch.float64) + 0.5) / k + (side - hk) // 2) * 2 / side - 1).float()
    gx = (((torch.arange(w, dtype=torch.float64) + 0.5) / k + (side - wk) // 2) * 2 / side - 1).float()
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)[None].expand(shape[0], h, w, 2)
    out = F.grid_sample(torch.as_tensor(p).permute(1, 0, 2, 3), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.permute(1, 0, 2, 3).numpy()


@pytest.mark.parametrize("spec,shape,box", [
    (PrepSpec(windows=("brain",), size=128, max_filter=2), (3, 200, 240), (0, 200, 0, 240)),  # k 2, pad rows
    (PrepSpec(windows=("brain",), size=64, max_filter=1), (2, 200, 240), (0, 200, 0, 240)),  # shrink
    (PrepSpec(windows=("brain",), size=48, max_filter=2), (2, 100, 90), (7, 93, 11, 80)),  # a crop box
    (PrepSpec(windows=("brain",), size=96, max_filter=2), (2, 60, 70), (0, 60, 0, 70)),  # k 1: enlarged
])
def test_restore_probabilities_is_grid_samples_bilinear_resampling(spec, shape, box):
    """The separable matrix form samples where grid_sample would (to float32 rounding of its coordinates)."""
    p = np.random.default_rng(0).random((6, shape[0], spec.size, spec.size), dtype=np.float32)
    got = restore_probabilities(p, shape, spec, box).numpy()
    want = _grid_sample_reference(p, shape, spec, box)
    assert got.shape == want.shape == (6, shape[0], box[1] - box[0], box[3] - box[2])
    np.testing.assert_allclose(got, want, atol=1e-5)  # grid_sample maps float32 coordinates; ours are float64
    assert restore_probabilities(p, shape, spec, box, slice(1, 2)).numpy() == pytest.approx(got[:, 1:2], abs=1e-6)


def test_prepared_mask_lies_where_the_image_shows_it():
    """A bright block drawn in HU and in the mask: after `prepare_volume` and `prepare_mask` (head
    crop, 2 x 2 blocks, padding to square, resizing) the image's bright pixels and the prepared
    mask cover the same place."""
    hu = np.full((3, 120, 180), -1000.0, np.float32)
    hu[:, 10:110, 20:170] = 30.0  # a "head"
    mask = np.zeros(hu.shape, np.uint8)
    mask[1, 40:70, 60:100] = 3
    hu[mask > 0] = 90.0
    vol = Volume(hu=hu, spacing=(5.0, 0.8, 0.8), affine=np.diag([0.8, 0.8, 5.0, 1.0]))
    spec = PrepSpec(windows=("80/20",), size=64, max_filter=2, crop_head=True)  # 90 HU -> 1, the head 0
    box = crop_box(hu, vol.spacing, spec)
    assert box == (6, 114, 16, 174)  # the head's box widened by 4 px
    image = prepare_volume(vol, spec)[0, 1]
    prepared = prepare_mask(mask, spec, box)
    assert set(np.unique(prepared)) == {0, 3} and not prepared[[0, 2]].any()
    inside = prepared[1] == 3
    assert image[inside].mean() > 0.9 and image[~inside].mean() < 0.02
    bright = np.argwhere(image > 0.5).mean(axis=0)
    assert np.abs(bright - np.argwhere(inside).mean(axis=0)).max() < 0.5  # same centre, to half a pixel
    assert abs((image > 0.5).sum() / inside.sum() - 1) < 0.1
    restored = restore_mask(_one_hot(prepared), mask.shape, spec, box)
    # back on the 0.8 mm pixels: a 30 x 40 px block seen as ~12 x 16 prepared px loses about a row at its edges
    assert _dice(restored == 3, mask == 3) > 0.93 and not restored[[0, 2]].any()
    assert np.abs(np.argwhere(restored == 3).mean(axis=0) - np.argwhere(mask == 3).mean(axis=0)).max() < 0.6


def test_slabs_and_z_filter_are_refused():
    with pytest.raises(InputError) as e:
        check_seg_spec(PrepSpec(z_max_filter=True))
    assert str(e.value) == ("segmentation keeps every slice: data.z_max_filter must be false and slab_mm unset, "
                            "got z_max_filter=True, slab_mm=None")


def _scan(tmp_path: Path, shape=(32, 64, 64)) -> tuple[Volume, Path]:
    affine = np.array([[0.7, 0, 0, -20], [0, 0.7, 0, -30], [0, 0, 5.0, 10], [0, 0, 0, 1]])
    vol = Volume(hu=np.zeros(shape, np.float32), spacing=(5.0, 0.7, 0.7), affine=affine)
    path = write_nifti(vol, tmp_path / "scans" / "s1.nii.gz")
    vol.source = [str(path)]
    return vol, path


def _save_mask(labels: np.ndarray, affine_ras: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(labels.transpose(2, 1, 0)), affine_ras), str(path))
    return path


def test_read_mask_follows_the_scans_axes(tmp_path):
    vol, _ = _scan(tmp_path)
    labels = np.zeros(vol.shape, np.uint8)
    labels[3, 10:20, 40:50] = 2  # low slice, top rows, right-hand columns
    canonical = _save_mask(labels, vol.affine_ras(), tmp_path / "masks" / "a.nii.gz")
    # the same mask stored with i and k reversed (and its affine saying so)
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    flip[0, 3], flip[2, 3] = vol.shape[2] - 1, vol.shape[0] - 1
    flipped = _save_mask(labels[::-1, :, ::-1], vol.affine_ras() @ flip, tmp_path / "masks" / "b.nii.gz")
    for path in (canonical, flipped):
        got = read_mask(path, vol)
        assert got.dtype == np.uint8 and np.array_equal(got, labels)


def test_geometry_mismatch_names_both_files(tmp_path):
    vol, _ = _scan(tmp_path)
    path = _save_mask(np.zeros((30, 64, 64), np.uint8), vol.affine_ras(), tmp_path / "masks" / "s1.nii.gz")
    with pytest.raises(InputError) as e:
        read_mask(path, vol, mask_name="masks/s1.nii.gz", scan_name="scans/s1")
    assert str(e.value) == "mask masks/s1.nii.gz has shape (30, 64, 64) but its scan scans/s1 has (32, 64, 64)"
    # the same from a manifest row: the names are the manifest's
    row = ManifestRow("s1", "p1", "scans/s1.nii.gz", 1, extra={"mask_path": "masks/s1.nii.gz"})
    with pytest.raises(InputError) as e:
        prepared_mask(row, tmp_path, PrepSpec(windows=("brain", "subdural", "bone"), size=32))
    assert str(e.value) == ("mask masks/s1.nii.gz has shape (30, 64, 64) but its scan scans/s1.nii.gz has "
                            "(32, 64, 64)")


def test_bleed_only_masks_become_unknown_subtype(tmp_path):
    stored = np.array([[[0, 1, 1]], [[0, 0, 1]]], np.uint8)
    assert np.array_equal(mask_targets(stored), stored)  # 1 = epidural by the convention
    assert np.array_equal(mask_targets(stored, "any"), stored * UNKNOWN_SUBTYPE)
    assert np.array_equal(mask_targets(stored * 255), stored * UNKNOWN_SUBTYPE)  # 0/255: bleed only
    with pytest.raises(InputError, match="mask_labels must be one of subtypes, any, got 'yes'"):
        mask_targets(stored, "yes")
    # through a manifest row (CT-ICH writes mask_labels any), cached like the images
    from ichdet.datasets.cache import PreparedCache

    vol, _ = _scan(tmp_path)
    labels = np.zeros(vol.shape, np.uint8)
    labels[5:8, 20:40, 20:40] = 1
    _save_mask(labels, vol.affine_ras(), tmp_path / "masks" / "s1.nii.gz")
    row = ManifestRow("s1", "p1", "scans/s1.nii.gz", 1, extra={"mask_path": "masks/s1.nii.gz", "mask_labels": "any"})
    spec = PrepSpec(windows=("brain", "subdural", "bone"), size=32, max_filter=2)
    cache = PreparedCache(tmp_path / "cache")
    first = prepared_mask(row, tmp_path, spec, cache)
    assert first.shape == (32, 32, 32) and set(np.unique(first)) == {0, UNKNOWN_SUBTYPE}
    assert np.array_equal(first[5:8, 10:20, 10:20], np.full((3, 10, 10), UNKNOWN_SUBTYPE))
    assert len(list((tmp_path / "cache").glob("??/*.npy"))) == 1
    assert np.array_equal(prepared_mask(row, tmp_path, spec, cache), first)  # from the cache
    negative = ManifestRow("s2", "p2", "scans/s1.nii.gz", 0)
    assert prepared_mask(negative, tmp_path, spec, cache, n_slices=32).shape == (32, 32, 32)
    assert prepared_mask(ManifestRow("s3", "p3", "scans/s1.nii.gz", 1), tmp_path, spec, cache, 32) is None


def test_restore_mask_takes_the_first_largest_class():
    """The label is the argmax over classes, ties to the lower class (background before any bleed)."""
    spec = PrepSpec(windows=("brain",), size=8, max_filter=1)
    p = np.zeros((6, 1, 8, 8), np.float32)
    p[0] = 0.5
    p[3, 0, 0:2, :] = 0.5                         # a tie with background: background
    p[3, 0, 2:4, :] = 0.6                         # intraventricular wins
    p[2, 0, 4:6, :], p[5, 0, 4:6, :] = 0.7, 0.7   # a tie between two subtypes: the first, 2
    got = restore_mask(p, (1, 8, 8), spec)
    assert got.dtype == np.uint8
    assert got[0, :, 0].tolist() == [0, 0, 3, 3, 2, 2, 0, 0] and (got[0] == got[0, :, :1]).all()
    q = np.random.default_rng(1).random((6, 2, 16, 16), dtype=np.float32)
    spec16 = PrepSpec(windows=("brain",), size=16, max_filter=1)
    assert np.array_equal(restore_mask(q, (2, 16, 16), spec16), q.argmax(0).astype(np.uint8))


@pytest.mark.parametrize("spec,shape,box,smooth", [
    (PrepSpec(windows=("brain",), size=32, max_filter=2), (3, 100, 120), None, True),   # k 2, pad rows
    (PrepSpec(windows=("brain",), size=48, max_filter=1), (2, 90, 70), (5, 85, 3, 66), True),  # crop box
    (PrepSpec(windows=("brain",), size=16, max_filter=2), (2, 40, 40), None, False),  # noise: mostly mixed
])
def test_restore_mask_is_the_argmax_of_the_interpolated_probabilities(spec, shape, box, smooth):
    """Interpolating only where the four prepared neighbours disagree gives the labels of the dense
    interpolation: exactly, up to float rounding where its two best classes are within 1e-5."""
    import torch

    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6, shape[0], spec.size, spec.size)).astype(np.float32) * 3
    if smooth:  # blobs: large uniform regions with boundaries between them
        logits = np.repeat(np.repeat(logits[:, :, ::8, ::8], 8, axis=2), 8, axis=3)
    p = torch.softmax(torch.from_numpy(logits), dim=0).numpy()
    got = restore_mask(p, shape, spec, box)
    dense = restore_probabilities(p, shape, spec, box).numpy()
    r0, r1, c0, c1 = box or (0, shape[1], 0, shape[2])
    want = dense.argmax(0).astype(np.uint8)
    top2 = np.sort(dense, axis=0)[-2:]
    differ = got[:, r0:r1, c0:c1] != want
    assert not (differ & (top2[1] - top2[0] > 1e-5)).any()
    assert differ.mean() < 1e-3
    outside = np.ones(shape, bool)
    outside[:, r0:r1, c0:c1] = False
    assert not got[outside].any()
