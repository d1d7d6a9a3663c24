"""Bad input through the CLI: exit code 2 and exactly one line on stderr naming the file and the problem."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless, JPEGLossless

from ichdet.cli import run

from ctfactory import JPEG_LS_REASON, head_like_volume, write_corrupt_jpeg_ls, write_series


def _fails(capsys, argv, *needles):
    code = run(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("ichdet: error: ") and "Traceback" not in line
    for n in needles:
        assert n in line, line
    return line


def _series(tmp_path: Path, z: int = 3) -> list[Path]:
    return write_series(tmp_path / "s", head_like_volume(z=z))


def _one_slice_with(tmp_path: Path, **elements) -> Path:
    """A one-slice series whose header elements are overwritten with `elements` (keyword: value)."""
    path = _series(tmp_path, z=1)[0]
    ds = pydicom.dcmread(path)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def test_missing_path(capsys, tmp_path):
    _fails(capsys, ["info", str(tmp_path / "nope")], f"{tmp_path / 'nope'}: no such file or folder")


def test_empty_folder(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    _fails(capsys, ["info", str(tmp_path / "empty")], "empty: folder is empty")


def test_folder_without_dicom(capsys, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("hello")
    (tmp_path / "d" / "x.bin").write_bytes(b"\x00" * 300)
    _fails(capsys, ["info", str(tmp_path / "d")], "d: no DICOM images found (2 file(s) looked at)")


def test_non_ct_modality(capsys, tmp_path):
    for f in _series(tmp_path):
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    _fails(capsys, ["info", str(tmp_path / "s")], "no CT series found (Modality MR)")


def test_truncated_file(capsys, tmp_path):
    files = _series(tmp_path)
    raw = files[1].read_bytes()
    files[1].write_bytes(raw[: len(raw) - 700])
    line = _fails(capsys, ["info", str(tmp_path / "s")], "IM00002.dcm")
    assert "truncated" in line


def test_header_dimensions_larger_than_pixel_data(capsys, tmp_path):
    path = _one_slice_with(tmp_path, Rows=512, Columns=512)
    _fails(capsys, ["info", str(path)], "IM00001.dcm: pixel data holds 2048 bytes but Rows x Columns x BitsAllocated (512x512x16) need 524288")


def test_absurd_header_dimensions_are_not_allocated(capsys, tmp_path):
    path = _one_slice_with(tmp_path, Rows=65535, Columns=65535)
    _fails(capsys, ["info", str(path)], "IM00001.dcm: Rows x Columns 65535x65535 is outside 1..4096")


def test_pixel_data_no_plugin_can_decode(capsys, tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder

    files = _series(tmp_path, z=1)
    ds = pydicom.dcmread(files[0])
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.save_as(files[0], enforce_file_format=True)
    decoder = get_decoder(JPEGLSLossless)  # as where none of its plugins is installed
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"gdcm": ("gdcm>=3.0.10",),
                                                  "pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1")})
    assert run(["info", str(files[0])]) == 2
    assert capsys.readouterr().err == (
        f"ichdet: error: {files[0]}: pixel data cannot be decoded (JPEG-LS Lossless Image Compression "
        "1.2.840.10008.1.2.4.80): no decoding plugin for it is installed (install one of: gdcm>=3.0.10; "
        "pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1)\n")


JPEG_LS_ERROR = ("ichdet: error: {}: pixel data cannot be decoded (JPEG-LS Lossless Image Compression "
                 f"1.2.840.10008.1.2.4.80): {JPEG_LS_REASON}")


def test_corrupt_jpeg_ls_pixel_stream_is_one_line(capsys, tmp_path):
    """The plugins are installed: the file is corrupt, not undecodable for want of a package."""
    path = write_corrupt_jpeg_ls(tmp_path / "jls.dcm")
    assert run(["info", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == JPEG_LS_ERROR.format(path) + "\n"


def test_corrupt_jpeg_ls_logs_nothing_without_verbose(tmp_path):
    path = write_corrupt_jpeg_ls(tmp_path / "jls.dcm")
    quiet = _console(["info", str(path)])
    assert quiet.returncode == 2 and quiet.stdout == ""
    assert quiet.stderr == JPEG_LS_ERROR.format(path) + "\n"  # no pydicom traceback, no libjpeg line
    loud = _console(["info", "-v", str(path)])  # the libraries' log records may show with -v
    assert loud.returncode == 2 and loud.stderr.endswith(JPEG_LS_ERROR.format(path) + "\n")
    assert "libjpeg error code" in loud.stderr and "Traceback" in loud.stderr


def _console(args: list[str]) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "ichdet"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ichdet.cli"]
    env = {k: v for k, v in os.environ.items() if k != "ICHDET_DEBUG"}
    return subprocess.run(cmd + args, capture_output=True, text=True, timeout=120, env=env)


def test_garbage_dicom_files(capsys, tmp_path):
    rng = np.random.default_rng(0)
    noise = tmp_path / "noise.dcm"  # random bytes named .dcm
    noise.write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    _is_one_line(capsys, noise, "no pixel data (7FE0,0010) in an image file: truncated or corrupt")
    path = _series(tmp_path, z=1)[0]
    raw = path.read_bytes()
    tag = b"\x20\x00\x0e\x00UI"  # SeriesInstanceUID, explicit VR: its VR becomes one pydicom does not know
    assert raw.count(tag) == 1
    (tmp_path / "vr.dcm").write_bytes(raw.replace(tag, b"\x20\x00\x0e\x00Uc"))
    _is_one_line(capsys, tmp_path / "vr.dcm", "corrupt DICOM header: SeriesInstanceUID cannot be read "
                 "(NotImplementedError: Unknown Value Representation 'Uc' in tag (0020,000E))")
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = "42"
    ds.save_as(tmp_path / "frames.dcm")
    tag = b"\x28\x00\x08\x00IS\x02\x00"  # NumberOfFrames, 2 bytes: "42" -> "ab"
    (tmp_path / "frames.dcm").write_bytes((tmp_path / "frames.dcm").read_bytes().replace(tag + b"42", tag + b"ab"))
    _is_one_line(capsys, tmp_path / "frames.dcm", "NumberOfFrames is not an integer, got 'ab'")


def test_garbage_in_a_reported_value_is_not_an_error(capsys, tmp_path):
    path = _one_slice_with(tmp_path, SliceThickness="5.000", GantryDetectorTilt="0.00")
    raw = path.read_bytes()
    for old, new in ((b"DS\x06\x005.000 ", b"DS\x06\x00thick "), (b"DS\x04\x000.00", b"DS\x04\x00tilt")):
        assert raw.count(old) == 1
        raw = raw.replace(old, new)
    path.write_bytes(raw)
    assert run(["info", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["gantry_tilt_tag_deg"] is None and d["spacing_mm"][0] == 1.0


def test_garbage_image_and_nifti_files(capsys, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    _is_one_line(capsys, tmp_path / "notes.png", "not a readable image (UnidentifiedImageError: cannot identify "
                 f"image file '{tmp_path / 'notes.png'}')")
    (tmp_path / "noise.nii.gz").write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    _is_one_line(capsys, tmp_path / "noise.nii.gz", "not a readable NIfTI file (ImageFileError: File "
                 f"{tmp_path / 'noise.nii.gz'} is not a gzip file)")
    affine = np.eye(4)
    affine[2, 1] = -1e25  # not singular, but no axis maps onto S
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.int16), affine), str(tmp_path / "shear.nii.gz"))
    _is_one_line(capsys, tmp_path / "shear.nii.gz", "affine [[1, 0, 0, 0], [0, 1, 0, 0], [0, -1e+25, 1, 0], "
                 "[0, 0, 0, 1]] gives no orientation (Unable to find out axis 1.0 in start_ornt)")


def _is_one_line(capsys, path: Path, message: str) -> None:
    assert run(["info", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"ichdet: error: {path}: {message}\n"


def test_corrupt_compressed_pixel_data(capsys, tmp_path):
    files = _series(tmp_path, z=1)
    ds = pydicom.dcmread(files[0])
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + b"\x13" * 200])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLossless
    ds.save_as(files[0], enforce_file_format=True)
    _fails(capsys, ["info", str(files[0])], "IM00001.dcm: pixel data", "JPEG Lossless")


def test_inconsistent_geometry(capsys, tmp_path):
    files = _series(tmp_path)
    ds = pydicom.dcmread(files[2])
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(files[2])
    _fails(capsys, ["info", str(tmp_path / "s")], "IM00003.dcm: ImageOrientationPatient [0, 1, 0, 0, 0, -1] differs from the series' [1, 0, 0, 0, 1, 0] (inconsistent geometry)")


def test_nan_in_nifti(capsys, tmp_path):
    a = np.zeros((4, 4, 3), np.float32)
    a[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(a, np.eye(4)), str(tmp_path / "scan.nii.gz"))
    _fails(capsys, ["info", str(tmp_path / "scan.nii.gz")], "scan.nii.gz: 1 voxel(s) are NaN or infinite")


def test_corrupt_gzip_nifti(capsys, tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8), np.int16), np.eye(4)), str(tmp_path / "scan.nii.gz"))
    raw = (tmp_path / "scan.nii.gz").read_bytes()
    (tmp_path / "scan.nii.gz").write_bytes(raw[: len(raw) // 2])
    _fails(capsys, ["info", str(tmp_path / "scan.nii.gz")], "scan.nii.gz:")


def test_unreadable_image(capsys, tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _fails(capsys, ["info", str(tmp_path / "x.jpg")], "x.jpg: not a readable image")


@pytest.mark.parametrize("entry", ["../evil.dcm", "/abs/evil.dcm", "a/../../evil.dcm"])
def test_zip_slip(capsys, tmp_path, entry):
    files = _series(tmp_path, z=1)
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as zf:
        zf.write(files[0], "ok/IM1.dcm")
        zf.writestr(entry, b"x")
    line = _fails(capsys, ["info", str(tmp_path / "s.zip")], "s.zip: zip entry")
    assert "absolute path" in line or "outside its folder" in line
    assert not (tmp_path / "evil.dcm").exists()


def test_zip_symlink_entry(capsys, tmp_path):
    info = zipfile.ZipInfo("link.dcm")
    info.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(tmp_path / "l.zip", "w") as zf:
        zf.writestr(info, "/etc/passwd")
    _fails(capsys, ["info", str(tmp_path / "l.zip")], "l.zip: zip entry 'link.dcm' is a symbolic link")


def test_not_a_zip(capsys, tmp_path):
    (tmp_path / "fake.zip").write_bytes(b"PK\x03\x04broken")
    _fails(capsys, ["info", str(tmp_path / "fake.zip")], "fake.zip: not a readable zip file")


def test_console_script_prints_no_traceback(tmp_path):
    exe = Path(sys.executable).parent / "ichdet"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ichdet.cli"]
    p = subprocess.run(cmd + ["info", str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip() == f"ichdet: error: {tmp_path / 'missing'}: no such file or folder"
    assert p.stdout == ""


def test_malformed_labels_csv_names_the_row(capsys, tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / f"{i:03d}.png")
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n0,1\n1,yes\n2,0\n")
    _fails(capsys, ["prepare", "folder", str(tmp_path), "--out", str(tmp_path / "m.csv"), "--label-column", "hemorrhage"],
           "labels.csv: row 3:", "'yes'")
    assert not (tmp_path / "m.csv").exists()


def test_malformed_manifest_names_the_row(tmp_path):
    from ichdet.datasets.manifest import read_manifest
    from ichdet.errors import InputError

    (tmp_path / "m.csv").write_text("scan_id,patient_id,path,label\na,p,x,1\nb,p,y,2\n")
    with pytest.raises(InputError, match=r"m.csv: row 3: column 'label' must be 0 or 1, got '2'"):
        read_manifest(tmp_path / "m.csv")


def test_empty_slice_file_in_a_series(capsys, tmp_path):
    files = _series(tmp_path, z=4)
    files[2].write_bytes(b"")
    _fails(capsys, ["info", str(tmp_path / "s")], "IM00003.dcm: file is empty (0 bytes): truncated DICOM")


def test_truncated_header(capsys, tmp_path):
    files = _series(tmp_path, z=3)
    files[0].write_bytes(files[0].read_bytes()[:400])
    _fails(capsys, ["info", str(tmp_path / "s")], "IM00001.dcm: ", "truncated")


def test_zero_rescale_slope(capsys, tmp_path):
    path = _one_slice_with(tmp_path, RescaleSlope="0")
    _fails(capsys, ["info", str(path)], "IM00001.dcm: RescaleSlope 0.0 / RescaleIntercept -1024.0 cannot map to HU")


def test_colour_pixels_are_not_ct(capsys, tmp_path):
    path = _one_slice_with(tmp_path, SamplesPerPixel=3)
    _fails(capsys, ["info", str(path)], "IM00001.dcm: SamplesPerPixel is 3; a CT slice must be grayscale (1)")


def test_zip_bomb(capsys, tmp_path):
    with zipfile.ZipFile(tmp_path / "b.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\0" * 5_000_000)
    _fails(capsys, ["info", str(tmp_path / "b.zip")], "b.zip: zip entry 'a.dcm' expands", "zip bomb")


def test_nifti_header_claiming_a_giant_volume(capsys, tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((30000, 30000, 1000))
    hdr.set_data_dtype(np.int16)
    (tmp_path / "huge.nii").write_bytes(hdr.binaryblock + b"\0" * 104)
    _fails(capsys, ["info", str(tmp_path / "huge.nii")], "huge.nii: header dimensions (30000, 30000, 1000) are empty or too large")


def test_unknown_transfer_syntax(capsys, tmp_path):
    files = _series(tmp_path, z=1)
    ds = pydicom.dcmread(files[0])
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"
    ds.save_as(files[0], enforce_file_format=False)
    _fails(capsys, ["info", str(files[0])], "IM00001.dcm: unknown transfer syntax 1.2.3.4.5 (0002,0010); cannot decode pixel data")


def test_degenerate_orientation(capsys, tmp_path):
    path = _one_slice_with(tmp_path, ImageOrientationPatient=[0, 0, 0, 0, 0, 0])
    _fails(capsys, ["info", str(path)], "IM00001.dcm: ImageOrientationPatient is not two orthogonal unit vectors, got [0, 0, 0, 0, 0, 0]")


def test_lone_slice_with_negative_thickness_still_reads(capsys, tmp_path):
    path = _one_slice_with(tmp_path, SliceThickness="-5")
    assert run(["info", str(path)]) == 0
    assert "1.0 mm between slices" in capsys.readouterr().out


def test_a_pipe_is_refused_not_read(capsys, tmp_path):
    import os

    os.mkfifo(tmp_path / "scan.zip")
    _fails(capsys, ["info", str(tmp_path / "scan.zip")], "scan.zip: not a regular file or folder")
