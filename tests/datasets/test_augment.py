"""Augmentation: the four modes at 1/4 each, exact mirror and shift, rotation about the centre,
reproducible from the generator alone, values kept in [0, 1]."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ichdet.datasets.augment import (augment_slice, augment_volume, augment_volume_labels, mirror, rotate, sample_rng,
                                     scaled_shift, shift, shift_slice_labels)


def classify(out: torch.Tensor, img: torch.Tensor) -> str:
    if torch.equal(out, img):
        return "original"
    if torch.equal(out, torch.flip(img, dims=[-1])):
        return "mirror"
    c = img.shape[-1] // 2
    hits = torch.nonzero(out[0] == img[0, c, c])  # values are unique, so the centre pixel is findable
    if len(hits) == 1:
        dy, dx = (hits[0] - c).tolist()
        if torch.equal(out, shift(img, (dy, dx))):
            return "shift"
    return "rotate"


def test_each_mode_a_quarter_of_the_time() -> None:
    g = torch.Generator().manual_seed(0)
    img = (torch.randperm(2 * 33 * 33, generator=g).float().reshape(2, 33, 33) + 1) / (2 * 33 * 33)  # unique, > 0
    counts: dict[str, int] = {}
    n = 1200
    for i in range(n):
        mode = classify(augment_slice(img, sample_rng(0, 0, i), ref_size=33), img)
        counts[mode] = counts.get(mode, 0) + 1
    assert set(counts) == {"original", "rotate", "mirror", "shift"}
    assert all(abs(c / n - 0.25) < 0.05 for c in counts.values()), counts


def test_mirror_is_left_right_flip() -> None:
    img = torch.rand(3, 16, 20)
    assert torch.equal(mirror(img), torch.flip(img, dims=[-1]))
    vol = torch.rand(1, 4, 16, 20)
    assert torch.equal(mirror(vol), torch.flip(vol, dims=[-1]))


def _first_seed_with_mode(mode: int) -> int:
    return next(s for s in range(100) if np.random.default_rng(s).integers(4) == mode)


def test_shift_moves_a_bright_pixel_by_the_drawn_offset() -> None:
    img = torch.zeros(1, 256, 256)
    img[0, 100, 120] = 1.0
    seed = _first_seed_with_mode(3)
    rng = np.random.default_rng(seed)
    rng.integers(4)
    dy, dx = int(rng.integers(-15, 16)), int(rng.integers(-15, 16))
    out = augment_slice(img, np.random.default_rng(seed))
    assert torch.nonzero(out[0]).tolist() == [[100 + dy, 120 + dx]]
    assert out.shape == img.shape and out.dtype == img.dtype


def test_shift_fills_with_zero_and_scales_with_size() -> None:
    img = torch.arange(1, 26, dtype=torch.float32).reshape(1, 5, 5)
    out = shift(img, (2, -1))
    assert torch.equal(out[0, 2:, :4], img[0, :3, 1:])
    assert out[0, :2].abs().sum() == 0 and out[0, :, 4].abs().sum() == 0
    assert (scaled_shift(15, 256), scaled_shift(15, 128), scaled_shift(15, 512)) == (15, 8, 30)


def test_rotation_keeps_centre_and_mass() -> None:
    yy, xx = torch.meshgrid(torch.arange(65.0), torch.arange(65.0), indexing="ij")
    blob = torch.exp(-((yy - 32) ** 2 + (xx - 36) ** 2) / (2 * 8.0**2)).unsqueeze(0)
    out = rotate(blob, 20.0)
    assert out.shape == blob.shape and out.dtype == blob.dtype
    assert torch.isclose(out[0, 32, 32], blob[0, 32, 32], atol=1e-5)
    assert abs(float(out.sum()) / float(blob.sum()) - 1.0) < 0.01
    assert not torch.allclose(out, blob, atol=1e-2)  # it did move
    vol = blob.unsqueeze(1).repeat(1, 5, 1, 1)  # (1, 5, 65, 65)
    assert torch.allclose(rotate(vol, 20.0, axis=0)[:, 2], out, atol=1e-5)  # about z = in-plane


def test_same_generator_same_output_and_values_in_range() -> None:
    img = torch.rand(2, 32, 32)
    vol = torch.rand(1, 8, 32, 32)
    for i in range(60):
        a = augment_slice(img, sample_rng(4, 1, i))
        assert torch.equal(a, augment_slice(img, sample_rng(4, 1, i)))
        assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0 and a.shape == img.shape
        v = augment_volume(vol, sample_rng(4, 1, i))
        assert torch.equal(v, augment_volume(vol, sample_rng(4, 1, i)))
        assert 0.0 <= float(v.min()) and float(v.max()) <= 1.0 and v.shape == vol.shape


def test_no_global_rng_is_used() -> None:
    np.random.seed(0)
    torch.manual_seed(0)
    before = (np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    img = torch.rand(1, 16, 16)
    torch.manual_seed(0)
    for i in range(20):
        augment_slice(img, sample_rng(0, 0, i))
        augment_volume(img.unsqueeze(1).repeat(1, 4, 1, 1), sample_rng(0, 0, i))
    assert np.array_equal(np.random.get_state()[1], before[0])
    assert torch.equal(torch.get_rng_state(), before[1])


def test_volume_modes_and_z_shift() -> None:
    vol = torch.zeros(1, 8, 32, 32)
    vol[0, 4, 16, 16] = 1.0
    modes = {"original": 0, "mirror": 0, "shift": 0, "rotate": 0}
    for i in range(400):
        out = augment_volume(vol, sample_rng(1, 0, i), ref_size=32)
        if torch.equal(out, vol):
            modes["original"] += 1
        elif torch.equal(out, torch.flip(vol, dims=[-1])):
            modes["mirror"] += 1
        elif out.sum() == 1.0 and (out == 1.0).sum() == 1:
            z, y, x = torch.nonzero(out[0])[0].tolist()
            assert abs(z - 4) <= 4 and abs(y - 16) <= 15 and abs(x - 16) <= 15  # z capped at Z // 2
            modes["shift"] += 1
        else:
            modes["rotate"] += 1
    assert all(60 < c < 140 for c in modes.values()), modes


def test_slice_labels_follow_the_volume() -> None:
    """augment_volume_labels draws what augment_volume draws and gives the same volume; labels
    stay with their slices (original, mirror, in-plane rotation), move with the z shift (-1 on
    the slices shifted in) and become unknown after a tilt (rotation about y or x)."""
    z_count = 8
    vol = torch.zeros(1, z_count, 32, 32)
    for z in range(z_count):
        vol[0, z, 8:24, 8:24] = (z + 1) / z_count  # slice z is recognisable by its value
    labels = np.stack([np.arange(z_count), np.arange(z_count) % 2], axis=1)  # (Z, 2): any trailing shape
    outcomes = {"kept": 0, "moved": 0, "unknown": 0}
    for i in range(240):
        out, lab = augment_volume_labels(vol, labels, sample_rng(2, 0, i), ref_size=32)
        assert torch.equal(out, augment_volume(vol, sample_rng(2, 0, i), ref_size=32))
        assert lab.shape == labels.shape and lab.dtype == labels.dtype
        if (lab == -1).all():
            outcomes["unknown"] += 1
            assert not torch.equal(out, vol)
            continue
        for z in range(z_count):
            if lab[z, 0] == -1:
                assert float(out[0, z].abs().max()) == 0.0 and lab[z, 1] == -1  # shifted in: air
            else:
                assert lab[z, 1] == lab[z, 0] % 2  # rows move whole
                assert float(out[0, z].max()) == pytest.approx((lab[z, 0] + 1) / z_count, abs=1e-5)
        outcomes["kept" if np.array_equal(lab, labels) else "moved"] += 1
    # original, mirror, in-plane rotation: 7/12; a z shift other than 0: about 1/4 * 8/9; a tilt: 1/6
    assert 110 < outcomes["kept"] < 170 and 30 < outcomes["moved"] < 80 and 20 < outcomes["unknown"] < 65, outcomes
    assert augment_volume_labels(vol, None, sample_rng(2, 0, 0))[1] is None
    assert shift_slice_labels(np.arange(4), 1).tolist() == [-1, 0, 1, 2]
    assert shift_slice_labels(np.arange(4), -2).tolist() == [2, 3, -1, -1]
    assert shift_slice_labels(np.arange(4), 4).tolist() == [-1, -1, -1, -1]
    from ichdet.errors import InputError
    with pytest.raises(InputError, match="^augment_volume: 3 slice labels for a volume of 8 slices$"):
        augment_volume_labels(vol, np.zeros(3), sample_rng(0, 0, 0))


@pytest.mark.parametrize("bad", [torch.rand(4, 4), np.zeros((1, 4, 4))])
def test_bad_shapes_are_refused(bad) -> None:
    from ichdet.errors import InputError
    with pytest.raises(InputError, match="augment_slice expects a torch tensor of 3 axes"):
        augment_slice(bad, sample_rng(0, 0, 0))
