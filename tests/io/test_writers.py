"""Writers: what ichdet writes, real tools (SimpleITK, nibabel) read back with the same geometry."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ichdet.io import read_dicom_series, read_nifti, write_dicom_series, write_nifti

from ctfactory import head_like_volume

sitk = pytest.importorskip("SimpleITK")


def _lps_to_sitk(volume):
    """(origin, spacing (x, y, z), direction row-major) as SimpleITK reports them."""
    d = volume.direction
    return volume.origin, (volume.spacing[2], volume.spacing[1], volume.spacing[0]), tuple(d.flatten())


@pytest.mark.parametrize("syntax", ["explicit", "rle", "jpeg2000"])
def test_dicom_series_round_trip_through_simpleitk(tmp_path, syntax):
    vol = head_like_volume(z=5)
    files = write_dicom_series(vol, tmp_path / "s", transfer_syntax=syntax, series_description="t")
    assert [f.name for f in files] == [f"IM{k:05d}.dcm" for k in range(1, 6)]
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "CT" and ds.RescaleIntercept == -1024
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    img = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img).astype(np.float32), vol.hu)
    origin, spacing, direction = _lps_to_sitk(vol)
    np.testing.assert_allclose(img.GetOrigin(), origin, atol=1e-3)
    np.testing.assert_allclose(img.GetSpacing(), spacing, atol=1e-3)
    np.testing.assert_allclose(img.GetDirection(), direction, atol=1e-5)
    back = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(back.hu, vol.hu)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-3)


def test_nifti_round_trip_through_nibabel_and_simpleitk(tmp_path):
    vol = head_like_volume(z=5)
    path = write_nifti(vol, tmp_path / "v.nii.gz")
    img = nib.load(str(path))
    assert img.shape == (32, 32, 5)
    np.testing.assert_allclose(img.affine, vol.affine_ras(), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), vol.hu)
    s = sitk.ReadImage(str(path))
    origin, spacing, direction = _lps_to_sitk(vol)
    np.testing.assert_allclose(s.GetOrigin(), origin, atol=1e-3)
    np.testing.assert_allclose(s.GetSpacing(), spacing, atol=1e-4)
    np.testing.assert_allclose(s.GetDirection(), direction, atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(s), vol.hu)
    back = read_nifti(path)
    np.testing.assert_array_equal(back.hu, vol.hu)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)


def test_write_is_atomic_no_partial_folder(tmp_path, monkeypatch):
    vol = head_like_volume(z=4)
    calls = {"n": 0}
    real = pydicom.Dataset.save_as

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(self, *a, **k)

    monkeypatch.setattr(pydicom.Dataset, "save_as", failing)
    with pytest.raises(OSError):
        write_dicom_series(vol, tmp_path / "s")
    assert not (tmp_path / "s").exists()
    assert [p.name for p in tmp_path.iterdir()] == []
