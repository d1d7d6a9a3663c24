"""Training augmentation of the papers (sec. 3.3.1-3.3.2), reproducible from explicit generators.

Each sample is used, with equal probability, as is, rotated (U(-25, 25) degrees), mirrored over
the vertical axis (left-right, the W axis) or shifted (U(-15, 15) pixels). Every random number
comes from the `np.random.Generator` the caller passes -- normally ``sample_rng(seed, epoch,
position)`` -- never from global state, so a sample's augmentation depends only on
(seed, epoch, position in the epoch): resumed runs, DataLoader workers and DDP ranks all see
exactly what one uninterrupted process would.

Rotation and mirroring are MONAI's `Rotate` and `Flip` (bilinear, zero padding); the shift is
an exact integer shift with zero fill. Zero is air in every window of a prepared image in
[0, 1]. In-plane shifts are given at `ref_size` pixels (the papers' 256) and scaled to the
image: 15 px at 256 allows 8 px (rounded) at 128.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Flip, Rotate

from ichdet.errors import InputError

MAX_ANGLE_DEG = 25.0  # rotation range, degrees
MAX_SHIFT_PX = 15  # shift range at REF_SIZE pixels (and slices, for z)
REF_SIZE = 256  # slice side the shift range is given at
MODES = ("original", "rotate", "mirror", "shift")


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of sample `index` (its position in the epoch) of `epoch` for run `seed`."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_tensor() if isinstance(t, MetaTensor) else t


def scaled_shift(max_shift: int, size: int, ref_size: int = REF_SIZE) -> int:
    """The shift range in pixels for an image of side `size`: round(max_shift * size / ref_size)."""
    return int(round(max_shift * size / ref_size))


def shift(img: torch.Tensor, offsets: tuple[int, ...], fill: float = 0.0) -> torch.Tensor:
    """Shift the last ``len(offsets)`` axes by whole pixels: ``out[..., i + d] = img[..., i]``,
    with `fill` where nothing lands. Same shape and dtype."""
    out = torch.full_like(img, fill)
    src: list[slice] = [slice(None)] * img.ndim
    dst: list[slice] = [slice(None)] * img.ndim
    for k, d in enumerate(offsets):
        ax = img.ndim - len(offsets) + k
        n, d = img.shape[ax], int(d)
        if abs(d) >= n:
            return out
        src[ax] = slice(max(0, -d), n - max(0, d))
        dst[ax] = slice(max(0, d), n - max(0, -d))
    out[tuple(dst)] = img[tuple(src)]
    return out


def mirror(img: torch.Tensor) -> torch.Tensor:
    """Left-right mirror (over the vertical axis): flips the last axis W. (C, ..., W) -> same."""
    return _plain(Flip(spatial_axis=img.ndim - 2)(img))


def rotate(img: torch.Tensor, degrees: float, axis: int = 0) -> torch.Tensor:
    """Rotate (C, H, W) in-plane, or (C, Z, H, W) about spatial `axis` (0 = z, in-plane;
    1 = y, tilting the Z-W plane; 2 = x, tilting the Z-H plane), about the image centre,
    bilinear, zero padding, same shape."""
    rad = math.radians(float(degrees))
    if img.ndim == 3:
        angle: float | tuple[float, ...] = rad
    else:
        angle = tuple(rad if a == axis else 0.0 for a in range(3))
    out = Rotate(angle=angle, keep_size=True, mode="bilinear", padding_mode="zeros", align_corners=False,
                 dtype=torch.float32)(img)
    return _plain(out).to(img.dtype)


def _clamp_like(out: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """Clip interpolation round-off to the range spanned by the input and the zero padding."""
    return out.clamp_(min(float(img.min()), 0.0), max(float(img.max()), 0.0))


def _check(img: torch.Tensor, ndim: int, what: str) -> None:
    if not isinstance(img, torch.Tensor) or img.ndim != ndim:
        shape = tuple(img.shape) if hasattr(img, "shape") else type(img).__name__
        raise InputError(f"{what} expects a torch tensor of {ndim} axes, got {shape}")


def augment_slice(img: torch.Tensor, rng: np.random.Generator, max_angle: float = MAX_ANGLE_DEG,
                  max_shift: int = MAX_SHIFT_PX, ref_size: int = REF_SIZE) -> torch.Tensor:
    """(C, H, W) -> (C, H, W): original, rotated U(-max_angle, max_angle) degrees, mirrored
    left-right, or shifted by integers U{-m..m} in y and x (m = max_shift scaled to H from
    `ref_size`), each with probability 1/4. Values stay within the input's range."""
    _check(img, 3, "augment_slice")
    mode = int(rng.integers(4))
    if mode == 1:
        out = rotate(img, rng.uniform(-max_angle, max_angle))
    elif mode == 2:
        out = mirror(img)
    elif mode == 3:
        m = scaled_shift(max_shift, img.shape[-2], ref_size), scaled_shift(max_shift, img.shape[-1], ref_size)
        out = shift(img, (int(rng.integers(-m[0], m[0] + 1)), int(rng.integers(-m[1], m[1] + 1))))
    else:
        return img
    return _clamp_like(out, img) if mode == 1 else out


def augment_volume(vol: torch.Tensor, rng: np.random.Generator, max_angle: float = MAX_ANGLE_DEG,
                   max_shift: int = MAX_SHIFT_PX, ref_size: int = REF_SIZE,
                   max_shift_z: int | None = None) -> torch.Tensor:
    """(C, Z, H, W) -> (C, Z, H, W): original, rotated U(-max_angle, max_angle) degrees about
    one axis drawn from (z, y, x), mirrored left-right, or shifted by integers in z, y and x,
    each with probability 1/4. In-plane shifts are scaled to H, W from `ref_size`; the z shift
    is U{-mz..mz} slices with mz = `max_shift_z` (default `max_shift`), capped at Z // 2 so at
    least half of a short volume stays in view."""
    return augment_volume_labels(vol, None, rng, max_angle, max_shift, ref_size, max_shift_z)[0]


def shift_slice_labels(labels: np.ndarray, dz: int, fill: int = -1) -> np.ndarray:
    """Per-slice labels (Z, ...) moved as `shift` moves the slices by `dz`: ``out[z + dz] =
    labels[z]``, `fill` (unknown) on the slices shifted in."""
    out = np.full_like(labels, fill)
    n = labels.shape[0]
    if abs(dz) < n:
        out[max(0, dz):n - max(0, -dz)] = labels[max(0, -dz):n - max(0, dz)]
    return out


def augment_volume_labels(vol: torch.Tensor, slice_labels: np.ndarray | None, rng: np.random.Generator,
                          max_angle: float = MAX_ANGLE_DEG, max_shift: int = MAX_SHIFT_PX, ref_size: int = REF_SIZE,
                          max_shift_z: int | None = None) -> tuple[torch.Tensor, np.ndarray | None]:
    """`augment_volume` (the same draws from `rng`, the same volume) that carries per-slice labels
    (Z, ...) along, -1 unknown: kept by the original, the mirror and a rotation about z (in the
    slice plane); moved with the z shift, unknown on the slices shifted in; all unknown after a
    rotation about y or x, whose tilted slices each mix several source slices. None stays None."""
    _check(vol, 4, "augment_volume")
    if slice_labels is not None and slice_labels.shape[0] != vol.shape[1]:
        raise InputError(f"augment_volume: {slice_labels.shape[0]} slice labels for a volume of "
                         f"{vol.shape[1]} slices")
    mode = int(rng.integers(4))
    if mode == 1:
        axis = int(rng.integers(3))
        out = rotate(vol, rng.uniform(-max_angle, max_angle), axis=axis)
        if slice_labels is not None and axis != 0:
            slice_labels = np.full_like(slice_labels, -1)
        return _clamp_like(out, vol), slice_labels
    if mode == 2:
        return mirror(vol), slice_labels
    if mode == 3:
        mz = min(max_shift if max_shift_z is None else int(max_shift_z), vol.shape[1] // 2)
        my, mx = scaled_shift(max_shift, vol.shape[2], ref_size), scaled_shift(max_shift, vol.shape[3], ref_size)
        offsets = (int(rng.integers(-mz, mz + 1)), int(rng.integers(-my, my + 1)), int(rng.integers(-mx, mx + 1)))
        if slice_labels is not None:
            slice_labels = shift_slice_labels(slice_labels, offsets[0])
        return shift(vol, offsets), slice_labels
    return vol, slice_labels


__all__ = ["MAX_ANGLE_DEG", "MAX_SHIFT_PX", "MODES", "REF_SIZE", "augment_slice", "augment_volume",
           "augment_volume_labels", "mirror", "rotate", "sample_rng", "scaled_shift", "shift", "shift_slice_labels"]
