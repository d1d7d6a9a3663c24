"""Read one 2D image (PNG/JPEG/TIFF/BMP or a single DICOM slice) for 2D image sets."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ichdet.errors import InputError
from ichdet.io.volume import Volume

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
MAX_PIXELS = 50_000_000  # refuse larger images (decompression bombs) before decoding


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _to_gray(img: Image.Image) -> np.ndarray:
    """float32 (H, W) in [0, 1]: RGB -> luminance, RGBA composited over black, 16-bit kept."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img, dtype=np.float32) / 65535.0
    if img.mode == "I":
        a = np.asarray(img, dtype=np.float32)
        return a / (65535.0 if a.max() > 255 else 255.0)
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        rgba = np.asarray(img, dtype=np.float32) / 255.0
        gray = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return gray * rgba[..., 3]
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def read_image(path: str | Path) -> Volume:
    """A single image as a one-slice Volume ``(1, H, W)``.

    PNG/JPEG give display intensities in [0, 1] (``info["units"] == "display"``); a DICOM file gives
    HU (``info["units"] == "HU"``). Pixel spacing is 1 mm unless the file says otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    if not is_image(path):
        from ichdet.io.dicom import read_dicom_series  # a single DICOM slice
        vol = read_dicom_series([path])
        vol.info["units"] = "HU"
        return vol
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_PIXELS or w < 1 or h < 1:
                    raise InputError(f"image of {w}x{h} pixels is empty or larger than {MAX_PIXELS}", path)
                img.seek(0)
                gray = _to_gray(img)
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        raise InputError(f"not a readable image ({e.__class__.__name__}: {e})", path) from None
    vol = Volume(hu=gray[None], spacing=(1.0, 1.0, 1.0), affine=np.eye(4), source=[str(path)])
    vol.info.update({"format": "image", "units": "display", "warnings": []})
    return vol
