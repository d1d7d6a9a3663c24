"""Small CT volumes and DICOM series made inside tests (no files shipped)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ichdet.io import Volume, write_dicom_series
from ichdet.io.volume import affine_from_geometry


def head_like_volume(z: int = 6, size: int = 32, spacing=(5.0, 0.7, 0.7), tilt_deg: float = 0.0,
                     origin=(-11.0, -11.0, -40.0)) -> Volume:
    """A tiny 'head': air outside, a bone ring, brain inside, one bright blob; each slice distinct.

    hu[k] has a slice-index marker (k * 10 HU) added inside the brain so order is checkable.
    """
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
    hu = np.full((z, size, size), -1000.0, dtype=np.float32)
    for k in range(z):
        sl = hu[k]
        sl[r < 0.9] = 1000.0  # skull
        sl[r < 0.75] = 30.0 + 10.0 * k  # brain + marker
    hu[z // 2, size // 2 - 2:size // 2 + 2, size // 2 - 2:size // 2 + 2] = 70.0  # a small bleed
    t = np.radians(tilt_deg)
    row_dir = np.array([0.0, np.cos(t), -np.sin(t)])
    normal = np.cross([1.0, 0, 0], row_dir)
    step = np.array([0.0, 0.0, spacing[0] / np.cos(t)]) if tilt_deg else normal * spacing[0]
    affine = affine_from_geometry(np.array(origin), np.array([1.0, 0, 0]), row_dir, step, spacing[1], spacing[2])
    dz = float(step @ normal)
    return Volume(hu=hu, spacing=(dz, spacing[1], spacing[2]), affine=affine, patient_id="P001")


def write_series(folder: Path, volume: Volume | None = None, **kw) -> list[Path]:
    volume = volume or head_like_volume()
    return write_dicom_series(volume, folder, **kw)


JPEG_LS_FILE = "MR_small_jpeg_ls_lossless.dcm"  # pydicom's test file: 64 x 64, 16-bit, JPEG-LS lossless
# what the bytes below give: every installed JPEG-LS decoder's reason (pyjpegls comes with highdicom)
JPEG_LS_REASON = ("pylibjpeg: A misplaced marker segment was found - found a double frame header; pyjpegls: Decoding "
                  "error: Invalid JPEG-LS stream, the encoded bit stream contains a general structural problem")


def write_corrupt_jpeg_ls(path: Path) -> Path:
    """pydicom's real JPEG-LS file as a CT slice at `path`, its header intact and every 7th byte of
    its pixel stream's entropy-coded data set to 0xFF (markers where none belong); skips the test
    when the file is not there."""
    import pydicom
    import pytest
    from pydicom.data import get_testdata_file
    from pydicom.encaps import generate_frames

    source = get_testdata_file(JPEG_LS_FILE)
    if not source:
        pytest.skip(f"{JPEG_LS_FILE} not found (pydicom's test files)")
    ds = pydicom.dcmread(source)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.Modality = "CT"  # the readers read CT only
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    raw = bytearray(path.read_bytes())
    start = raw.find(frame)
    assert start > 0 and raw.count(frame) == 1
    for i in range(start + 100, start + len(frame) - 100, 7):
        raw[i] = 0xFF
    path.write_bytes(bytes(raw))
    return path
