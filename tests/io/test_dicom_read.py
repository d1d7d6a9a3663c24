"""DICOM series reading: real CQ500 data, pydicom-data files and series written in the test."""
from __future__ import annotations

import random
import warnings
import zipfile

import numpy as np
import pydicom
import pytest

from ichdet.errors import InputError
from ichdet.io import read_dicom_series, read_volume, scan_series
from ichdet.io.dicom_pixels import slice_to_hu

from ctfactory import head_like_volume, write_series


@pytest.fixture(scope="module")
def cq500(cq500_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_dicom_series(cq500_dir)


def test_cq500_reads_as_238_slices_in_patient_order(cq500, cq500_dir):
    v = cq500
    assert v.shape == (238, 512, 512)
    assert all("CT000000" not in s for s in v.source)  # the tilted stray file of the 2nd series
    assert v.spacing[0] == pytest.approx(0.618, abs=0.001)
    assert v.spacing[1] == pytest.approx(0.443359)
    assert v.gantry_tilt_deg == pytest.approx(8.5, abs=0.05)
    # order: positions strictly increasing along the slice normal, InstanceNumber 1 (inferior) first
    normal = v.slice_normal
    along = [float(np.asarray(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient, float) @ normal) for f in v.source]
    assert np.all(np.diff(along) > 0)
    assert pydicom.dcmread(v.source[0], stop_before_pixels=True).InstanceNumber == 1
    assert [g["after_slice"] for g in v.info["gaps"]] == [235]
    assert v.info["gaps"][0]["step_mm"] == pytest.approx(1.236, abs=0.002)
    assert v.hu.min() == -1024.0 and v.hu.max() == 3071.0


def test_cq500_hu_is_anatomical(cq500):
    mid = cq500.hu[150]
    assert np.median(mid[:20, :20]) == -1024.0  # air in the corner
    assert (mid > 700).sum() > 1000  # skull
    centre = mid[200:300, 200:300]
    assert 15 < np.median(centre) < 60  # brain parenchyma


def test_fast_jpeg_decoder_equals_pylibjpeg(cq500_dir, cq500):
    for k in (0, 120, 237):
        ds = pydicom.dcmread(cq500.source[k])
        ref = np.maximum(ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept), -1024)
        np.testing.assert_array_equal(cq500.hu[k], ref)


def test_cq500_other_series_by_uid(cq500_dir):
    stray = pydicom.dcmread(cq500_dir / "CT000000.dcm", stop_before_pixels=True)
    v = read_dicom_series(cq500_dir, series_uid=str(stray.SeriesInstanceUID))
    assert v.shape == (1, 512, 512)
    assert v.gantry_tilt_deg == pytest.approx(0.0)  # one slice: no step to shear


def test_pydicom_data_uncompressed_and_j2k_are_the_same_hu(pydicom_data_dir):
    a = read_volume(pydicom_data_dir / "693_UNCR.dcm")
    b = read_volume(pydicom_data_dir / "693_J2KR.dcm")
    assert a.shape == b.shape == (1, 512, 512)
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.patient_id == "CQ500-CT-310"
    assert (a.hu > 700).sum() > 1000 and a.hu.min() == -1024.0


def test_order_by_position_not_file_name_or_instance_number(tmp_path):
    vol = head_like_volume(z=7)
    files = write_series(tmp_path / "s", vol)
    names = [f"x{random.Random(0).random():.8f}_{i}.dcm" for i in range(len(files))]
    random.Random(1).shuffle(names)
    for f, n in zip(files, names):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = 100 - ds.InstanceNumber + (3 if ds.InstanceNumber == 2 else 0)
        ds.save_as(tmp_path / "s" / n)
        f.unlink()
    v = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(v.hu, vol.hu)
    np.testing.assert_allclose(v.affine, vol.affine, atol=1e-3)


def test_largest_axial_series_is_picked_and_others_named(tmp_path):
    write_series(tmp_path / "study" / "thick", head_like_volume(z=4))
    big = head_like_volume(z=9)
    big.series_uid = "1.2.3.999"
    write_series(tmp_path / "study" / "thin", big)
    with pytest.warns(UserWarning, match="also found series"):
        v = read_dicom_series(tmp_path / "study")
    assert v.shape[0] == 9 and v.series_uid == "1.2.3.999"
    assert len(scan_series(tmp_path / "study")) == 2


def test_tilted_series_keeps_its_geometry(tmp_path):
    vol = head_like_volume(z=5, tilt_deg=15.0)
    write_series(tmp_path / "t", vol)
    v = read_dicom_series(tmp_path / "t")
    assert v.gantry_tilt_deg == pytest.approx(15.0, abs=0.01)
    assert v.spacing[0] == pytest.approx(5.0, abs=1e-3)
    np.testing.assert_allclose(v.affine, vol.affine, atol=1e-3)


def test_duplicate_positions_dropped_and_reported(tmp_path):
    files = write_series(tmp_path / "d", head_like_volume(z=5))
    ds = pydicom.dcmread(files[2])
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.save_as(tmp_path / "d" / "dup.dcm")
    v = read_dicom_series(tmp_path / "d")
    assert v.shape[0] == 5 and v.info["duplicates_dropped"] == 1
    assert any("duplicate positions" in w for w in v.info["warnings"])


def test_zip_of_a_series(tmp_path):
    files = write_series(tmp_path / "s", head_like_volume(z=4))
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as zf:
        for f in files:
            zf.write(f, f"study/series/{f.name}")
    v = read_dicom_series(tmp_path / "s.zip")
    assert v.shape == (4, 32, 32)
    assert v.source[0] == "IM00001.dcm"


def test_rsna_12bit_intercept_defect_is_corrected(tmp_path):
    files = write_series(tmp_path / "r", head_like_volume(z=1))
    ds = pydicom.dcmread(files[0])
    true_hu = ds.pixel_array.astype(np.int32) - 1024
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
    ds.RescaleIntercept = "0"
    ds.PixelData = (true_hu % 4096).astype(np.uint16).tobytes()  # what the defective files hold
    out = np.empty(true_hu.shape, np.float32)
    assert slice_to_hu(ds, files[0], out) == 1
    np.testing.assert_array_equal(out, np.maximum(true_hu, -1024))


def test_signed_bits_stored_below_16_sign_extends(tmp_path):
    files = write_series(tmp_path / "b", head_like_volume(z=1))
    ds = pydicom.dcmread(files[0])
    stored = ds.pixel_array.astype(np.int16)  # HU + 1024 in [24, 2024]: fits 12 bits signed
    stored[0, 0] = -24  # a negative stored value must survive sign extension
    raw = stored.astype(np.uint16) & 0x0FFF  # 12-bit two's complement, high bits cleared
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = raw.tobytes()
    out = np.empty(stored.shape, np.float32)
    slice_to_hu(ds, files[0], out)
    np.testing.assert_array_equal(out, np.maximum(stored.astype(np.float32) - 1024, -1024))


def test_missing_series_uid_lists_the_available(tmp_path):
    write_series(tmp_path / "s", head_like_volume(z=2))
    with pytest.raises(InputError, match="series 9.9.9 not found; available: "):
        read_dicom_series(tmp_path / "s", series_uid="9.9.9")
