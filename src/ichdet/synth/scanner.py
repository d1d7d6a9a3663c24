"""Scanner effects: in-plane blur (point spread), upsampling to the output grid, quantum noise."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ichdet.errors import InputError
from ichdet.synth.grid import upsample_linear

NOISE_SIGMA_HU = (3.0, 8.0)  # typical image noise of a 5 mm head CT (HU, 1 SD)
PSF_SIGMA_MM = 0.45  # in-plane Gaussian point spread (mm, 1 SD)
HU_RANGE = (-1024.0, 3071.0)  # what a 12-bit CT stores


def noise_sigma_for(difficulty: float, rng: np.random.Generator) -> float:
    """Noise SD (HU) growing with difficulty, jittered per scan, within `NOISE_SIGMA_HU`."""
    lo, hi = NOISE_SIGMA_HU
    return float(np.clip(lo + (hi - lo) * (0.15 + 0.7 * difficulty) + rng.normal(0.0, 0.6), lo, hi))


def acquire(hu: np.ndarray, factor: int, pixel_mm: float, rng: np.random.Generator,
            noise_sigma: float, psf_mm: float = PSF_SIGMA_MM) -> np.ndarray:
    """Clean render-grid HU (Z, h, w) -> scanner image (Z, h*factor, w*factor) float32 HU.

    The render grid (pitch `pixel_mm`) is blurred by the point spread, noise is added there
    (upsampling correlates it over ~factor pixels, like real CT noise texture; its SD is corrected
    for the interpolation), then bilinearly upsampled and clipped to the 12-bit HU range.
    """
    if noise_sigma < 0 or not np.isfinite(noise_sigma):
        raise InputError(f"noise_sigma must be a finite value >= 0 HU, got {noise_sigma}")
    sigma_px = psf_mm / pixel_mm
    img = ndimage.gaussian_filter(hu, (0.0, sigma_px, sigma_px), mode="nearest") if sigma_px > 0.15 else hu.copy()
    if noise_sigma > 0:
        # variance kept by bilinear upsampling, per axis: mean over output phases of (1-|t|)^2 + t^2
        t = np.abs((np.arange(factor) + 0.5) / factor - 0.5)
        keep = float(np.mean((1 - t) ** 2 + t**2)) ** 2
        noise = rng.standard_normal(img.shape, dtype=np.float32)
        noise *= np.float32(noise_sigma / np.sqrt(keep))
        img += noise
    out = upsample_linear(img.astype(np.float32, copy=False), factor)
    return np.clip(out, *HU_RANGE, out=out)
