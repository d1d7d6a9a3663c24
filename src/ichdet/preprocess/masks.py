"""Label masks through the spatial steps of `prepare_volume`, and class probabilities back.

`prepare_mask` takes a label mask (Z, H, W) in a volume's geometry to the prepared grid
(Z, size, size) with the image's spatial steps (head crop with the same box -> k x k blocks ->
pad to square -> resize), label by label: each label's area fraction goes through the steps
(block mean instead of the image's block maximum, area/bilinear resizing as `resize_slices`), and
a prepared pixel takes the label of the largest fraction, background included. The HU maximum
filter is never applied to labels: it would grow every bleed by up to a block.

`restore_mask` is the inverse for a network's output: per-class probabilities (K, Z, size, size)
are resampled bilinearly at the centre of every original pixel inside the crop box (one affine
map per axis, the exact inverse of the steps above), then the argmax is taken, so volumes are
measured on the original voxels. Pixels outside the box are background.

Segmentation keeps slices as they are: specs with `z_max_filter` or `slab_mm` are refused
(`check_seg_spec`).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ichdet.errors import InputError
from ichdet.preprocess.anatomy import HEAD_THRESHOLD_HU, head_box, head_mask
from ichdet.preprocess.downsample import resize_slices
from ichdet.preprocess.pipeline import PrepSpec

Box = tuple[int, int, int, int]  # (row0, row1, col0, col1), half-open, in the original slice
RESTORE_CHUNK = 8  # slices resampled at a time by `restore_mask` (memory: chunk x K x H x W x 4 bytes)


def check_seg_spec(spec: PrepSpec) -> PrepSpec:
    """`spec` if it keeps one prepared slice per source slice (no z max filter, no slabs)."""
    if spec.z_max_filter or spec.slab_mm is not None:
        raise InputError(f"segmentation keeps every slice: data.z_max_filter must be false and slab_mm unset, "
                         f"got z_max_filter={spec.z_max_filter}, slab_mm={spec.slab_mm}")
    return spec


def crop_box(hu: np.ndarray, spacing: Sequence[float] | None, spec: PrepSpec) -> Box:
    """The in-plane box `prepare_volume` keeps of a HU volume (Z, H, W): the head's box with
    `spec.crop_head` (as `crop_to_head` finds it), else (and when no head is found) the whole slice."""
    h, w = hu.shape[-2:]
    if spec.crop_head:
        box = head_box(head_mask(np.asarray(hu).reshape(-1, h, w), spacing, HEAD_THRESHOLD_HU), 4)
        if box is not None:
            return tuple(int(v) for v in box)  # type: ignore[return-value]
    return 0, int(h), 0, int(w)


def _block_factor(h: int, w: int, spec: PrepSpec) -> int:
    return spec.max_filter if max(h, w) > spec.size else 1  # as prepare_volume chooses it


def _block_mean(x: np.ndarray, k: int) -> np.ndarray:
    """(Z, h, w) -> (Z, ceil(h/k), ceil(w/k)): mean of each k x k block, ragged edges padded with 0."""
    if k == 1:
        return x
    z, h, w = x.shape
    x = np.pad(x, [(0, 0), (0, (-h) % k), (0, (-w) % k)])
    return x.reshape(z, x.shape[1] // k, k, x.shape[2] // k, k).mean(axis=(2, 4), dtype=np.float32)


def prepare_mask(mask: np.ndarray, spec: PrepSpec, box: Box | None = None) -> np.ndarray:
    """Label mask uint8 (Z, H, W) -> uint8 (Z, size, size) on the prepared grid of a volume of that
    shape whose crop box is `box` (`crop_box`; None = the whole slice). Labels keep their values."""
    m = np.asarray(mask)
    if m.ndim != 3 or min(m.shape) == 0:
        raise InputError(f"prepare_mask expects a (Z, H, W) label mask, got shape {m.shape}")
    check_seg_spec(spec)
    r0, r1, c0, c1 = box if box is not None else (0, m.shape[1], 0, m.shape[2])
    m = m[:, r0:r1, c0:c1]
    k = _block_factor(m.shape[1], m.shape[2], spec)
    labels = [int(v) for v in np.unique(m) if v != 0]
    if not labels:
        return np.zeros((m.shape[0], spec.size, spec.size), dtype=np.uint8)
    fractions = np.stack([resize_slices(_block_mean((m == v).astype(np.float32), k), spec.size, fill=0.0)
                          for v in labels])  # (L, Z, size, size)
    background = 1.0 - fractions.sum(axis=0, keepdims=True)
    win = np.concatenate([background, fractions]).argmax(axis=0)  # ties go to the lower index
    return np.asarray([0, *labels], dtype=np.uint8)[win]


def _axis_sampling(n: int, k: int, square: int, offset: int,
                   size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the n original pixels of one axis of the crop box sample that axis of the prepared grid
    (side `size`): (i0, i1) long (n,) the two neighbouring prepared pixels and frac float32 (n,) the
    weight of i1. Pixel y sits at (y + 0.5) / k + offset on the padded square of side `square`, i.e. at
    ((y + 0.5) / k + offset) * size / square - 0.5 in prepared pixels (grid_sample's
    align_corners=False convention), clamped to the grid's border."""
    y = torch.arange(n, dtype=torch.float64)
    x = (((y + 0.5) / k + offset) * size / square - 0.5).clamp(0, size - 1)
    i0 = x.floor().long()
    return i0, (i0 + 1).clamp(max=size - 1), (x - i0).float()


def _weights(sampling: tuple[torch.Tensor, torch.Tensor, torch.Tensor], size: int) -> torch.Tensor:
    """float32 (n, size): an axis' `_axis_sampling` as bilinear weights, one row per original pixel."""
    i0, i1, frac = sampling
    w = torch.zeros(len(i0), size, dtype=torch.float32)
    rows = torch.arange(len(i0))
    w.index_put_((rows, i0), 1.0 - frac, accumulate=True)
    w.index_put_((rows, i1), frac, accumulate=True)
    return w


def _sampling(shape: Sequence[int], spec: PrepSpec, box: Box | None) -> tuple[Box, tuple, tuple]:
    """(box, rows' `_axis_sampling`, columns' `_axis_sampling`) of a volume of `shape` (Z, H, W)."""
    r0, r1, c0, c1 = box if box is not None else (0, int(shape[1]), 0, int(shape[2]))
    h, w = r1 - r0, c1 - c0
    k = _block_factor(h, w, spec)
    hk, wk = math.ceil(h / k), math.ceil(w / k)
    side = max(hk, wk)
    return ((r0, r1, c0, c1), _axis_sampling(h, k, side, (side - hk) // 2, spec.size),
            _axis_sampling(w, k, side, (side - wk) // 2, spec.size))


def _check_probabilities(probabilities: np.ndarray | torch.Tensor, shape: Sequence[int], spec: PrepSpec,
                         name: str) -> torch.Tensor:
    p = torch.as_tensor(probabilities, dtype=torch.float32)
    if p.ndim != 4 or p.shape[-2:] != (spec.size, spec.size) or p.shape[1] != shape[0]:
        raise InputError(f"{name} expects (K, {shape[0]}, {spec.size}, {spec.size}) probabilities "
                         f"for a volume of shape {tuple(shape)}, got {tuple(p.shape)}")
    return p


def restore_probabilities(probabilities: np.ndarray | torch.Tensor, shape: Sequence[int], spec: PrepSpec,
                          box: Box | None = None, z: slice = slice(None)) -> torch.Tensor:
    """Per-class probabilities (K, Z, size, size) -> float32 (K, Z_z, h, w) at the original pixels
    of the crop box (h = row1 - row0, w = col1 - col0) of a volume of `shape` (Z, H, W), for the
    slices `z` (all by default). Bilinear and separable: rows (h, size) @ slice @ columns (size, w)."""
    p = _check_probabilities(probabilities, shape, spec, "restore_probabilities")
    _, ys, xs = _sampling(shape, spec, box)
    return torch.matmul(torch.matmul(_weights(ys, spec.size), p[:, z]), _weights(xs, spec.size).T)  # (K, Zc, h, w)


def _first_argmax(p: torch.Tensor) -> torch.Tensor:
    """uint8 (...): index of the largest of p (K, ...) along its first axis, the first on ties (as
    `argmax`), by K - 1 elementwise passes: torch's argmax over a leading axis strides across memory
    and took 0.55 s per 8 slices of 6 x 512 x 512."""
    best, idx = p[0].clone(), torch.zeros(p.shape[1:], dtype=torch.uint8)
    for k in range(1, p.shape[0]):
        more = p[k] > best
        best = torch.where(more, p[k], best)
        idx.masked_fill_(more, k)
    return idx


def restore_mask(probabilities: np.ndarray | torch.Tensor, shape: Sequence[int], spec: PrepSpec,
                 box: Box | None = None, chunk: int = RESTORE_CHUNK) -> np.ndarray:
    """Per-class probabilities (K, Z, size, size) (class 0 background, class i = label i) ->
    uint8 label mask (Z, H, W) in the original geometry: the first argmax of the probabilities
    `restore_probabilities` gives, `chunk` slices at a time; outside the crop box 0.

    Only where the four prepared pixels an original pixel is interpolated from disagree is the
    interpolation computed: where they share one label, every convex combination of their
    probability vectors has that label too (it beats the lower classes strictly and the higher ones
    or ties, in each corner and so in any mix), so that pixel takes it as it is."""
    check_seg_spec(spec)
    shape = tuple(int(s) for s in shape)
    p = _check_probabilities(probabilities, shape, spec, "restore_mask")
    (r0, r1, c0, c1), (y0, y1, fy), (x0, x1, fx) = _sampling(shape, spec, box)
    out = np.zeros(shape, dtype=np.uint8)
    for start in range(0, shape[0], chunk):
        z = slice(start, min(start + chunk, shape[0]))
        pz = p[:, z]
        labels = _first_argmax(pz)  # (Zc, s, s) on the prepared grid
        top, bottom = labels[:, y0], labels[:, y1]  # (Zc, h, s)
        corners = [top[:, :, x0], top[:, :, x1], bottom[:, :, x0], bottom[:, :, x1]]  # (Zc, h, w) each
        restored = corners[0].clone()
        mixed = (corners[0] != corners[1]) | (corners[0] != corners[2]) | (corners[0] != corners[3])
        zz, yy, xx = mixed.nonzero(as_tuple=True)
        if len(zz):
            wy, wx = fy[yy], fx[xx]
            a, b = y0[yy], y1[yy]
            c, d = x0[xx], x1[xx]
            mix = ((1 - wy) * (1 - wx) * pz[:, zz, a, c] + (1 - wy) * wx * pz[:, zz, a, d]
                   + wy * (1 - wx) * pz[:, zz, b, c] + wy * wx * pz[:, zz, b, d])  # (K, n)
            restored[zz, yy, xx] = _first_argmax(mix)
        out[z, r0:r1, c0:c1] = restored.numpy()
    return out


__all__ = ["Box", "RESTORE_CHUNK", "check_seg_spec", "crop_box", "prepare_mask", "restore_mask",
           "restore_probabilities"]
