"""Where the phantom is sampled: scan geometry, head pose, and the grid of sample points.

Frames (all mm):
- *scanner*: X to patient left, Y posterior, Z superior (LPS axes); X = Y = 0 at the image centre,
  Z = 0 at the centre of slice 0 (the most inferior).
- *head*: the same axes attached to the head, origin at the centre of the cranial cavity;
  ``scanner = R @ head + offset`` with `Pose.rotation()` R (yaw, pitch = tilt, roll).

The phantom is rendered on a coarser in-plane grid (pitch near `INTERNAL_PIXEL_MM`), one sample
plane per slice (or `n_sub` planes across the slab for small objects), then upsampled.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ichdet.errors import InputError

INTERNAL_PIXEL_MM = 0.9  # the phantom is rendered near this in-plane pitch (mm)
Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class ScanGeometry:
    """Output grid: (n_slices, size, size) voxels of slice_thickness_mm x pixel_spacing_mm^2."""

    n_slices: int
    size: int
    slice_thickness_mm: float
    pixel_spacing_mm: float

    def __post_init__(self) -> None:
        if int(self.n_slices) < 1:
            raise InputError(f"n_slices must be >= 1, got {self.n_slices}")
        if int(self.size) < 16:
            raise InputError(f"size must be >= 16 pixels, got {self.size}")
        if not 0.1 <= float(self.slice_thickness_mm) <= 20.0:
            raise InputError(f"slice_thickness must be in [0.1, 20] mm, got {self.slice_thickness_mm}")
        if not 0.05 <= float(self.pixel_spacing_mm) <= 10.0:
            raise InputError(f"pixel_spacing must be in [0.05, 10] mm, got {self.pixel_spacing_mm}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (int(self.n_slices), int(self.size), int(self.size))

    @property
    def factor(self) -> int:
        """Integer in-plane downsampling of the render grid (1 for small images)."""
        f = max(1, round(INTERNAL_PIXEL_MM / self.pixel_spacing_mm))
        while self.size % f:
            f -= 1
        return f


@dataclass(frozen=True)
class Pose:
    """Head placement: rotations (degrees) and the head origin in scanner mm (X, Y, Z)."""

    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    offset_mm: tuple[float, float, float]

    def rotation(self) -> np.ndarray:
        """3x3 head->scanner rotation Rz(yaw) @ Rx(pitch) @ Ry(roll)."""
        a, b, c = np.radians([self.yaw_deg, self.pitch_deg, self.roll_deg])
        rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
        return rz @ rx @ ry


@dataclass(frozen=True)
class SampleGrid:
    """Sample points ``(Z * n_sub, h, w)`` in head-frame mm; the full render grid has
    ``h = w = size // factor``. A sub-grid (`start`, `extent`) is a window of it with local indices."""

    geometry: ScanGeometry
    pose: Pose
    start: tuple[int, int, int] = (0, 0, 0)  # (slice, row, col) of the first sample in the full grid
    extent: tuple[int, int, int] | None = None  # shape of the window; None: the full grid

    @property
    def full_shape(self) -> tuple[int, int, int]:
        f = self.geometry.factor
        return (self.geometry.n_slices, self.geometry.size // f, self.geometry.size // f)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.extent or self.full_shape

    @property
    def region(self) -> Box:
        """This window as slices of the full render grid."""
        return tuple(slice(a, a + n) for a, n in zip(self.start, self.shape))  # type: ignore[return-value]

    def sub(self, start: tuple[int, int, int], extent: tuple[int, int, int]) -> SampleGrid:
        """A window of this grid (`start` in local indices)."""
        return SampleGrid(self.geometry, self.pose, tuple(a + b for a, b in zip(self.start, start)), extent)  # type: ignore[arg-type]

    def cropped(self, half_extent_mm: tuple[float, float, float], margin_mm: float = 4.0) -> SampleGrid:
        """The in-plane window holding a head-frame box of +-`half_extent_mm` (x, y, z) on every slice."""
        corners = np.array(np.meshgrid(*[(-h, h) for h in half_extent_mm], indexing="ij")).reshape(3, -1).T
        scanner = corners @ self.pose.rotation().T + np.asarray(self.pose.offset_mm)
        g = self.geometry
        px = self.pixel_mm
        lo = (scanner[:, :2].min(axis=0) - margin_mm + (g.size - 1) / 2 * g.pixel_spacing_mm) / px
        hi = (scanner[:, :2].max(axis=0) + margin_mm + (g.size - 1) / 2 * g.pixel_spacing_mm) / px
        n = self.full_shape[1]
        (c0, r0), (c1, r1) = np.clip(np.floor(lo), 0, n).astype(int), np.clip(np.ceil(hi) + 1, 0, n).astype(int)
        return SampleGrid(g, self.pose, (0, int(r0), int(c0)), (self.full_shape[0], max(1, r1 - r0), max(1, c1 - c0)))

    def chunks(self, n: int) -> list[SampleGrid]:
        """Split into up to `n` sub-grids of consecutive slices."""
        edges = np.linspace(0, self.shape[0], min(n, self.shape[0]) + 1).round().astype(int)
        return [self.sub((a, 0, 0), (b - a, *self.shape[1:])) for a, b in zip(edges[:-1], edges[1:]) if b > a]

    @property
    def pixel_mm(self) -> float:
        """In-plane pitch of the render grid (mm)."""
        return self.geometry.pixel_spacing_mm * self.geometry.factor

    def index_to_head(self, n_sub: int = 1) -> np.ndarray:
        """4x4 mapping local sample index ``(col, row, plane, 1)`` (planes = Z * n_sub) to head-frame mm."""
        g = self.geometry
        f, px, dz = g.factor, g.pixel_spacing_mm, g.slice_thickness_mm
        k0, r0, c0 = self.start
        centre = ((f - 1) / 2 - (g.size - 1) / 2) * px
        to_scanner = np.array([[f * px, 0, 0, centre + c0 * f * px], [0, f * px, 0, centre + r0 * f * px],
                               [0, 0, dz / n_sub, (0.5 / n_sub - 0.5 + k0) * dz], [0, 0, 0, 1.0]])
        rot = self.pose.rotation()
        to_head = np.eye(4)
        to_head[:3, :3] = rot.T
        to_head[:3, 3] = -rot.T @ np.asarray(self.pose.offset_mm, float)
        return to_head @ to_scanner

    @cached_property
    def _head_to_index(self) -> np.ndarray:
        return np.linalg.inv(self.index_to_head(1))

    def head_to_index(self, p: np.ndarray) -> np.ndarray:
        """Head-frame points (..., 3) mm -> fractional (slice, row, col) of the render grid."""
        p = np.asarray(p, float)
        idx = p @ self._head_to_index[:3, :3].T + self._head_to_index[:3, 3]
        return idx[..., ::-1]

    def plane_height_mm(self, n_sub: int = 1) -> np.ndarray:
        """(Z * n_sub,) scanner Z of each sample plane relative to the head origin (mm)."""
        dz = self.geometry.slice_thickness_mm
        s = np.arange(self.shape[0] * n_sub) + self.start[0] * n_sub
        return (s + 0.5) * dz / n_sub - 0.5 * dz - self.pose.offset_mm[2]

    def box(self, centre: np.ndarray, radius_mm: float) -> Box | None:
        """Index box (slices of the (Z, h, w) grid) holding a head-frame sphere; None if off-grid."""
        k, r, c = self.head_to_index(centre)
        half = (radius_mm / self.geometry.slice_thickness_mm + 0.5, radius_mm / self.pixel_mm + 1,
                radius_mm / self.pixel_mm + 1)
        out = []
        for v, h, n in zip((k, r, c), half, self.shape):
            lo, hi = max(0, int(np.floor(v - h))), min(n, int(np.ceil(v + h)) + 1)
            if hi <= lo:
                return None
            out.append(slice(lo, hi))
        return tuple(out)  # type: ignore[return-value]

    def coords(self, box: Box | None = None, n_sub: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Head-frame (x, y, z) float32 arrays ``(planes, rows, cols)`` of the box's samples.

        With `n_sub` > 1 each slice of the box contributes `n_sub` planes across its slab.
        """
        box = box or (slice(0, self.shape[0]), slice(0, self.shape[1]), slice(0, self.shape[2]))
        m = self.index_to_head(n_sub)
        s = np.arange(box[0].start * n_sub, box[0].stop * n_sub, dtype=float)[:, None, None]
        r = np.arange(box[1].start, box[1].stop, dtype=float)[None, :, None]
        c = np.arange(box[2].start, box[2].stop, dtype=float)[None, None, :]
        out = []
        for i in range(3):
            plane_row = (m[i, 1] * r + m[i, 2] * s + m[i, 3]).astype(np.float32)
            out.append(plane_row + (m[i, 0] * c).astype(np.float32))
        return out[0], out[1], out[2]

    def plane_wave(self, k: np.ndarray, phase: float, planes: slice | None = None) -> np.ndarray:
        """``cos(k . p + phase)`` over the grid (k in rad/mm, p head-frame mm), float32 (Z, h, w).

        Evaluated separably (columns x plane-rows), a few array operations instead of ~10.
        """
        planes = planes or slice(0, self.shape[0])
        m = self.index_to_head(1)
        kk = np.asarray(k, float) @ m[:3, :]  # rad per index step along (col, row, plane), + const
        s = np.arange(planes.start, planes.stop, dtype=float)[:, None]
        r = np.arange(self.shape[1], dtype=float)[None, :]
        c = np.arange(self.shape[2], dtype=float)
        a = kk[0] * c
        b = kk[1] * r + kk[2] * s + kk[3] + phase
        ca, sa = np.cos(a).astype(np.float32), np.sin(a).astype(np.float32)
        cb, sb = np.cos(b).astype(np.float32)[:, :, None], np.sin(b).astype(np.float32)[:, :, None]
        out = cb * ca
        out -= sb * sa
        return out


def upsample_linear(a: np.ndarray, factor: int) -> np.ndarray:
    """(Z, h, w) -> (Z, h*f, w*f) bilinear, pixel centres aligned (edge values repeated)."""
    if factor == 1:
        return a
    for axis in (1, 2):
        shape = list(a.shape)
        shape[axis] *= factor
        out = np.empty(shape, a.dtype)
        n = a.shape[axis]
        for p in range(factor):
            t = np.float32(abs((p + 0.5) / factor - 0.5))  # distance to the input centre, input pixels
            dst = out[(slice(None),) * axis + (slice(p, None, factor),)]
            np.multiply(a, 1 - t, out=dst)
            if t == 0:
                continue
            src = (slice(None),) * axis
            if (p + 0.5) / factor < 0.5:  # neighbour before
                dst[src + (slice(1, n),)] += t * a[src + (slice(0, n - 1),)]
                dst[src + (slice(0, 1),)] += t * a[src + (slice(0, 1),)]
            else:
                dst[src + (slice(0, n - 1),)] += t * a[src + (slice(1, n),)]
                dst[src + (slice(n - 1, n),)] += t * a[src + (slice(n - 1, n),)]
        a = out
    return a


def upsample_nearest(a: np.ndarray, factor: int) -> np.ndarray:
    """(Z, h, w) -> (Z, h*f, w*f) by repeating each sample f x f times."""
    if factor == 1:
        return a
    return np.repeat(np.repeat(a, factor, axis=1), factor, axis=2)
