"""NIfTI in any orientation, and 2D images in their many forms."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from ichdet.errors import InputError
from ichdet.io import read_image, read_nifti, read_volume

from ctfactory import head_like_volume


@pytest.mark.parametrize("codes", [("R", "A", "S"), ("L", "P", "I"), ("P", "S", "R"), ("S", "L", "A")])
def test_any_stored_orientation_reads_as_axial_inferior_first(tmp_path, codes):
    vol = head_like_volume(z=6, size=16)
    ras = vol.affine_ras()
    data = vol.hu.transpose(2, 1, 0)  # (i, j, k) in L, P, S order
    src = nib.orientations.axcodes2ornt(("L", "P", "S"))
    dst = nib.orientations.axcodes2ornt(codes)
    t = nib.orientations.ornt_transform(src, dst)
    stored = nib.orientations.apply_orientation(data, t)
    affine = ras @ nib.orientations.inv_ornt_aff(t, data.shape)
    nib.save(nib.Nifti1Image(stored.astype(np.int16), affine), str(tmp_path / "v.nii"))
    v = read_nifti(tmp_path / "v.nii")
    np.testing.assert_array_equal(v.hu, vol.hu)
    np.testing.assert_allclose(v.affine, vol.affine, atol=1e-4)
    assert v.info["stored_orientation"] == "".join(codes)
    # slice markers (k * 10 HU in the brain) increase inferior -> superior
    assert list(v.hu[:, 8, 4]) == [30.0 + 10 * k for k in range(6)]


def test_nifti_nan_is_rejected(tmp_path):
    a = np.zeros((4, 4, 3), np.float32)
    a[1, 2, 0] = np.nan
    nib.save(nib.Nifti1Image(a, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    with pytest.raises(InputError, match=r"nan.nii.gz: 1 voxel\(s\) are NaN or infinite"):
        read_nifti(tmp_path / "nan.nii.gz")


def test_nifti_header_larger_than_file_is_rejected(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), str(tmp_path / "t.nii"))
    raw = (tmp_path / "t.nii").read_bytes()
    (tmp_path / "t.nii").write_bytes(raw[: len(raw) - 300])
    with pytest.raises(InputError, match="truncated"):
        read_nifti(tmp_path / "t.nii")


def test_nifti_2d_is_rejected(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)), str(tmp_path / "flat.nii"))
    with pytest.raises(InputError, match=r"expected a 3D volume, got shape \(8, 8\)"):
        read_nifti(tmp_path / "flat.nii")


def test_images_grey_rgb_rgba_16bit(tmp_path):
    grey = (np.arange(64 * 48) % 256).astype(np.uint8).reshape(48, 64)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.jpg", quality=100)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray((grey.astype(np.uint16) * 257)).save(tmp_path / "w16.png")
    g = read_image(tmp_path / "g.png")
    assert g.shape == (1, 48, 64) and g.info["units"] == "display"
    np.testing.assert_allclose(g.hu[0], grey / 255.0, atol=1e-6)
    np.testing.assert_allclose(read_image(tmp_path / "rgb.jpg").hu[0], grey / 255.0, atol=0.03)
    a = read_image(tmp_path / "a.png").hu[0]
    assert a[0, 0] == 0.0 and a[0, 5] == pytest.approx(5 / 255.0, abs=1e-3)
    np.testing.assert_allclose(read_image(tmp_path / "w16.png").hu[0], grey / 255.0, atol=1e-4)
    assert read_volume(tmp_path / "g.png").shape == (1, 48, 64)


def test_unreadable_image(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(InputError, match=r"broken.png: not a readable image"):
        read_image(tmp_path / "broken.png")
