"""Decode one DICOM slice's pixel data and convert it to Hounsfield units, in place."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from ichdet.errors import InputError
from ichdet.io.dicom_values import int_value

try:  # optional fast decoders (libjpeg-turbo 3 lossless); pydicom + pylibjpeg is the fallback
    import imagecodecs
except ImportError:  # pragma: no cover - imagecodecs is a declared dependency
    imagecodecs = None

AIR_HU = -1024.0  # floor: padding and out-of-field values (-2000, -3024) become air
NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}  # implicit / explicit VR little endian
JPEG_LOSSLESS_SYNTAXES = {"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}  # process 14 (and SV1)
MAX_REASON_CHARS = 200  # a decoder's message is cut to this in the one error line
_ERROR_CODE = re.compile(r"\w+ error code '[^']*' returned from \w+\(\):\s*")  # libjpeg's preamble to its reason


def _check_pixel_module(ds: Dataset, path: Path) -> tuple[int, int, int, int]:
    spp = int_value(ds, "SamplesPerPixel", path, 1) or 1
    if spp != 1:
        raise InputError(f"SamplesPerPixel is {spp}; a CT slice must be grayscale (1)", path)
    bits = int_value(ds, "BitsAllocated", path, 0)
    if bits not in (8, 16, 32):
        raise InputError(f"BitsAllocated is {bits}; expected 8, 16 or 32", path)
    stored = int_value(ds, "BitsStored", path, bits) or bits
    if not 1 <= stored <= bits:
        raise InputError(f"BitsStored is {stored} with BitsAllocated {bits}", path)
    return int_value(ds, "Rows", path, 0), int_value(ds, "Columns", path, 0), bits, stored


def _signed(ds: Dataset, path: Path) -> bool:
    return int_value(ds, "PixelRepresentation", path, 0) == 1


def _as_stored(arr: np.ndarray, signed: bool, bits: int, stored: int) -> np.ndarray:
    """Reinterpret raw unsigned/signed words as the DICOM integer type, honouring BitsStored."""
    arr = arr.view(np.dtype(f"{'i' if signed else 'u'}{bits // 8}"))
    if stored < bits:
        if signed:  # sign-extend from BitsStored
            shift = bits - stored
            arr = (arr << shift) >> shift
        else:
            arr = arr & ((1 << stored) - 1)
    return arr


def _native_pixels(ds: Dataset, path: Path, rows: int, cols: int, bits: int, stored: int) -> np.ndarray:
    """Uncompressed little-endian pixels, one slice, no extra copies."""
    signed = _signed(ds, path)
    data = ds.PixelData
    need = rows * cols * bits // 8
    if len(data) < need:
        raise InputError(f"pixel data holds {len(data)} bytes but Rows x Columns x BitsAllocated "
                         f"({rows}x{cols}x{bits}) need {need}: truncated file", path)
    arr = np.frombuffer(data, dtype=np.dtype(f"<u{bits // 8}"), count=rows * cols).reshape(rows, cols)
    return _as_stored(arr, signed, bits, stored)


def _fast_jpeg_lossless(ds: Dataset, path: Path, rows: int, cols: int, bits: int, stored: int) -> np.ndarray | None:
    """Decode single-frame JPEG Lossless with libjpeg-turbo (releases the GIL); None to fall back."""
    if imagecodecs is None or bits != 16:
        return None
    from pydicom.encaps import generate_frames
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        arr = imagecodecs.jpeg8_decode(frame)
    except Exception:  # noqa: BLE001 - any failure here falls back to pydicom's decoders
        return None
    if arr.shape != (rows, cols) or arr.dtype.itemsize != 2:
        return None
    return _as_stored(arr, _signed(ds, path), bits, stored)


def _decoder_reason(e: Exception) -> str:
    """The decoders' own words, short: pydicom's "all plugins failed" text -> "plugin: reason; ..."."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Unable to decode"):
        lines = lines[1:]
    reason = "; ".join(_ERROR_CODE.sub("", line) for line in lines) or e.__class__.__name__
    return reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS - 3] + "..."


def _decoded_pixels(ds: Dataset, path: Path, rows: int, cols: int) -> np.ndarray:
    """Pixels of a compressed (or big-endian, deflated) slice through pydicom's decoding plugins."""
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    if not syntax.is_transfer_syntax:
        raise InputError(f"unknown transfer syntax {syntax} (0002,0010); cannot decode pixel data", path)
    cannot = f"pixel data cannot be decoded ({syntax.name} {syntax})"
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise InputError(f"{cannot}: pydicom has no decoder for this transfer syntax", path) from None
    if not decoder.is_available:
        needs = "; ".join(m.split(" - requires ", 1)[-1] for m in decoder.missing_dependencies)
        raise InputError(f"{cannot}: no decoding plugin for it is installed (install one of: {needs})", path)
    try:
        arr = ds.pixel_array
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - the decoders raise many types on damaged data
        raise InputError(f"{cannot}: {_decoder_reason(e)}", path) from None
    if arr.shape != (rows, cols):
        raise InputError(f"decoded pixel data has shape {arr.shape}, header says {rows}x{cols}", path)
    return arr


def _value_or(ds: Dataset, keyword: str, default: float) -> object:
    """The element's value, or `default` when it is absent or empty (0 is a value, not absent)."""
    value = ds.get(keyword)
    return default if value is None or value == "" else value


def slice_to_hu(ds: Dataset, path: Path, out: np.ndarray) -> int:
    """Write the slice's HU into `out` (H, W) float32; returns 1 if the RSNA intercept defect was fixed.

    HU = stored * RescaleSlope + RescaleIntercept, floored at -1024 (air). RSNA 2019 has 12-bit
    unsigned images with a wrong intercept (BitsStored 12, PixelRepresentation 0, intercept > -100):
    they are shifted by 1000, wrapped at 4096, and given intercept -1000.
    """
    rows, cols, bits, stored = _check_pixel_module(ds, path)
    if "PixelData" not in ds:
        raise InputError("no pixel data (7FE0,0010)", path)
    try:
        syntax = str(ds.file_meta.TransferSyntaxUID)
    except AttributeError:
        syntax = "1.2.840.10008.1.2"
        ds.file_meta.TransferSyntaxUID = syntax  # raw datasets without meta are implicit little endian
    try:
        arr = None
        if syntax in NATIVE_SYNTAXES:
            arr = _native_pixels(ds, path, rows, cols, bits, stored)
        elif syntax in JPEG_LOSSLESS_SYNTAXES:
            arr = _fast_jpeg_lossless(ds, path, rows, cols, bits, stored)
        if arr is None:
            arr = _decoded_pixels(ds, path, rows, cols)
    except OSError as e:
        raise InputError(f"cannot read pixel data ({e})", path) from None
    try:
        slope = float(_value_or(ds, "RescaleSlope", 1.0))
        intercept = float(_value_or(ds, "RescaleIntercept", 0.0))
    except (TypeError, ValueError):
        raise InputError(f"RescaleSlope/RescaleIntercept not numeric: {ds.get('RescaleSlope')!r}, {ds.get('RescaleIntercept')!r}", path) from None
    if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
        raise InputError(f"RescaleSlope {slope} / RescaleIntercept {intercept} cannot map to HU", path)
    fixed = 0
    if stored == 12 and not _signed(ds, path) and intercept > -100:
        shifted = arr.astype(np.int32) + 1000
        shifted[shifted >= 4096] -= 4096
        arr, intercept, fixed = shifted, -1000.0, 1
    np.multiply(arr, slope, out=out, casting="unsafe")
    out += intercept
    np.maximum(out, AIR_HU, out=out)
    return fixed
