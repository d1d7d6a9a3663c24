"""From a HU volume to network input: windows, maximum-filter downsampling, resizing,
cranial-cavity slice selection, head cropping, and `prepare_volume` that chains them.

The maximum filter follows the papers (sec. 3.3.1-3.3.2): a 2x2 block maximum takes 512x512
slices to 256x256 and a 2x2x2 one halves a volume, so a small bright bleed survives where an
average would dilute it. Every function takes numpy arrays; `window`, `window_stack` and the
max filters also take torch tensors and return the same kind.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ichdet.errors import InputError
from ichdet.io.volume import Volume

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class Window:
    """A display window in HU: values in [center - width/2, center + width/2] map to [0, 1]."""

    center: float
    width: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width) and self.width > 0):
            raise InputError(f"window needs a finite center and a positive width, got {self.center}/{self.width}")


BRAIN_WINDOW = Window(center=40, width=80)  # HU
SUBDURAL_WINDOW = Window(center=80, width=200)  # HU
SOFT_TISSUE_WINDOW = Window(center=40, width=380)  # HU
BONE_WINDOW = Window(center=600, width=2800)  # HU
WINDOWS: dict[str, Window] = {
    "brain": BRAIN_WINDOW, "subdural": SUBDURAL_WINDOW,
    "soft_tissue": SOFT_TISSUE_WINDOW, "bone": BONE_WINDOW,
}

AIR_HU = -1000.0  # fill value when padding HU images
HEAD_THRESHOLD_HU = -500.0  # anything denser than this (skin, fat, brain, bone) can be head
BONE_THRESHOLD_HU = 300.0  # skull ring; cortical bone is 700+, partial volume pulls thin bone down
SOFT_TISSUE_HU = (0.0, 100.0)  # CSF, brain, blood inside the skull
MIN_CRANIAL_AREA_MM2 = 500.0  # soft tissue enclosed by the ring for a slice to count as cranial
SKULL_GAP_MM = 4.0  # closing half-width: bridges ear canals, sutures, partial-volume gaps in the ring
MAX_FILTER_CHUNK = 8  # slices per chunk in the numpy max filter
CRANIAL_PIXEL_MM = 1.0  # cranial-slice masks are block-reduced to about this pixel size
CRANIAL_Z_GAP_MM = 10.0  # non-cranial runs this short between cranial slices are filled
TYPICAL_SLICE_MM = 5.0  # assumed slice spacing when none is given
TABLE_OPENING_MM = 6.0  # opening radius: removes table, headrest and text thinner than ~12 mm
TYPICAL_HEAD_FOV_MM = 250.0  # assumed field of view when the pixel size is unknown


def parse_window(text: str | Window) -> Window:
    """`"brain"`, `"soft-tissue"`, `"40/80"` (center/width, HU) or a `Window` -> `Window`."""
    if isinstance(text, Window):
        return text
    name = str(text).strip().lower().replace("-", "_").replace(" ", "_")
    if name in WINDOWS:
        return WINDOWS[name]
    parts = name.split("/")
    if len(parts) == 2:
        try:
            center, width = float(parts[0]), float(parts[1])
        except ValueError:
            pass
        else:
            return Window(center, width)
    raise InputError(f"unknown window {text!r}: use one of {sorted(WINDOWS)} or 'center/width' in HU, e.g. '40/80'")


def window(hu: ArrayT, w: Window | str) -> ArrayT:
    """Map HU (any shape) to float32 in [0, 1] through window `w`, clipping outside it."""
    w = parse_window(w)
    low = w.center - w.width / 2.0
    if isinstance(hu, torch.Tensor):
        return ((hu.to(torch.float32) - low) / w.width).clamp_(0.0, 1.0)
    out = np.asarray((np.asarray(hu, dtype=np.float32) - np.float32(low)) / np.float32(w.width))
    return np.clip(out, 0.0, 1.0, out=out) if out.ndim else np.clip(out, 0.0, 1.0)


def window_stack(hu: ArrayT, windows: Sequence[Window | str]) -> ArrayT:
    """HU of shape S -> float32 (C, *S), one channel per window, in the order given."""
    if len(windows) == 0:
        raise InputError("window_stack needs at least one window, got none")
    chans = [window(hu, w) for w in windows]
    return torch.stack(chans) if isinstance(hu, torch.Tensor) else np.stack(chans)


def _lowest(x: np.ndarray | torch.Tensor) -> float | int:
    dtype = x.dtype
    if isinstance(x, torch.Tensor):
        return -math.inf if dtype.is_floating_point else (False if dtype == torch.bool else torch.iinfo(dtype).min)
    if np.issubdtype(dtype, np.floating):
        return -np.inf
    return False if dtype == np.bool_ else np.iinfo(dtype).min


def _block_max(x: ArrayT, k: int, axes: Sequence[int]) -> ArrayT:
    """Block maximum of size `k` along `axes` (negative indices); ragged edges padded low.

    numpy input is processed in chunks of slices along axis 0 into one preallocated output:
    the temporaries stay small, which makes a cold (238, 512, 512) call ~10x faster.
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InputError(f"max filter size must be a positive integer, got {k!r}")
    if x.ndim < max(-a for a in axes):
        raise InputError(f"max filter over {len(axes)} axes needs more dimensions, got shape {tuple(x.shape)}")
    axes = sorted(x.ndim + a for a in axes)
    if k == 1:
        return x
    if isinstance(x, torch.Tensor) or x.ndim < 3:
        return _block_max_dense(x, k, axes)
    step = k * max(1, MAX_FILTER_CHUNK // k) if 0 in axes else MAX_FILTER_CHUNK
    out = np.empty([-(-n // k) if a in axes else n for a, n in enumerate(x.shape)], dtype=x.dtype)
    for start in range(0, x.shape[0], step):
        o = start // k if 0 in axes else start
        part = _block_max_dense(x[start:start + step], k, axes)
        out[o:o + part.shape[0]] = part
    return out


def _block_max_dense(x: ArrayT, k: int, axes: Sequence[int]) -> ArrayT:
    """`_block_max` in one go; `axes` are non-negative and sorted."""
    is_torch = isinstance(x, torch.Tensor)
    pads = [(0, (-x.shape[a]) % k if a in axes else 0) for a in range(x.ndim)]
    if any(p for _, p in pads):
        if is_torch:
            x = F.pad(x, [v for pad in reversed(pads) for v in pad], value=_lowest(x))
        else:
            x = np.pad(x, pads, constant_values=_lowest(x))
    maximum = torch.maximum if is_torch else np.maximum
    for axis in axes:
        # pairwise maxima of strided views: ~10x faster than reshape(...).max(), 3x torch max_pool
        idx = [slice(None)] * x.ndim
        idx[axis] = slice(0, None, k)
        out = x[tuple(idx)]
        for offset in range(1, k):
            idx[axis] = slice(offset, None, k)
            out = maximum(out, x[tuple(idx)])
        x = out
    return x


def max_filter_2d(x: ArrayT, k: int = 2) -> ArrayT:
    """(..., H, W) -> (..., ceil(H/k), ceil(W/k)): maximum of each k x k block."""
    return _block_max(x, k, (-2, -1))


def max_filter_3d(x: ArrayT, k: int = 2) -> ArrayT:
    """(Z, H, W) -> (ceil(Z/k), ceil(H/k), ceil(W/k)): maximum of each k x k x k block."""
    if x.ndim != 3:
        raise InputError(f"max_filter_3d expects (Z, H, W), got shape {tuple(x.shape)}")
    return _block_max(x, k, (-3, -2, -1))


def fit_to_square(x: np.ndarray, fill: float = AIR_HU) -> np.ndarray:
    """(..., H, W) -> (..., S, S), S = max(H, W): pad the short side evenly with `fill`."""
    h, w = x.shape[-2:]
    if h == w:
        return x
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    pad = [(0, 0)] * (x.ndim - 2) + [(top, s - h - top), (left, s - w - left)]
    return np.pad(x, pad, constant_values=fill)


def resize_slices(x: np.ndarray, size: int, fill: float = AIR_HU) -> np.ndarray:
    """(Z, H, W) -> float32 (Z, size, size). Non-square slices are padded with `fill` first
    (aspect kept); shrinking averages areas, enlarging interpolates bilinearly."""
    if x.ndim != 3:
        raise InputError(f"resize_slices expects (Z, H, W), got shape {x.shape}")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise InputError(f"size must be a positive integer, got {size!r}")
    x = fit_to_square(np.asarray(x, dtype=np.float32), fill)
    if x.shape[-1] == size:
        return x
    t = torch.from_numpy(np.ascontiguousarray(x))[:, None]
    if x.shape[-1] > size:
        out = F.interpolate(t, size=(size, size), mode="area")
    else:
        out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return out[:, 0].numpy()


def _pixel_mm(shape: tuple[int, ...], spacing: Sequence[float] | None) -> tuple[float, float]:
    """(row, column) pixel size in mm from a 2- or 3-value spacing, or a typical head FOV."""
    if spacing is None:
        s = TYPICAL_HEAD_FOV_MM / max(shape[-2:])
        return s, s
    sp = [float(v) for v in spacing]
    if len(sp) not in (2, 3) or min(sp) <= 0:
        raise InputError(f"spacing must be (dy, dx) or (dz, dy, dx) in mm, got {tuple(spacing)}")
    return sp[-2], sp[-1]


def _open_mm(mask: np.ndarray, radius_mm: float, pixel: tuple[float, float]) -> np.ndarray:
    """Binary opening of a 2D mask by a disk of `radius_mm`, via two distance transforms
    (cost independent of the radius). Outside the image counts as background."""
    padded = np.pad(mask, 1)
    eroded = ndimage.distance_transform_edt(padded, sampling=pixel) > radius_mm
    if not eroded.any():
        return np.zeros_like(mask)
    return (ndimage.distance_transform_edt(~eroded, sampling=pixel) <= radius_mm)[1:-1, 1:-1]


def _largest_component(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest 4-connected component of a 2D mask and its size in pixels."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask), 0
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    best = int(np.argmax(counts))
    return labels == best, int(counts[best])


def _enclosed(ring: np.ndarray) -> np.ndarray:
    """Pixels of a 2D mask's complement not connected to the image border (its holes)."""
    labels, _ = ndimage.label(~ring)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return (labels > 0) & ~np.isin(labels, border)


def cranial_slices(
    hu: np.ndarray, spacing: Sequence[float] | None = None, min_area_mm2: float = MIN_CRANIAL_AREA_MM2,
    gap_mm: float = SKULL_GAP_MM,
) -> np.ndarray:
    """(Z, H, W) HU -> bool (Z,): True where a closed skull ring (> 300 HU, gaps up to ~2x
    `gap_mm` bridged, e.g. the ear canals) encloses a connected region of soft tissue
    (0-100 HU) of at least `min_area_mm2`. Masks are block-reduced to ~1 mm pixels first
    (bone by block maximum, so thin bone survives). The cavity is one block along z, so gaps
    of up to 10 mm between cranial slices (open rings at the skull base) are filled."""
    hu = np.asarray(hu)
    if hu.ndim != 3 or min(hu.shape) == 0:
        raise InputError(f"cranial_slices expects (Z, H, W) HU, got shape {hu.shape}")
    dy, dx = _pixel_mm(hu.shape, spacing)
    f = max(1, int(CRANIAL_PIXEL_MM / max(dy, dx)))
    bone = max_filter_2d(hu > BONE_THRESHOLD_HU, f)
    soft = max_filter_2d((hu >= SOFT_TISSUE_HU[0]) & (hu <= SOFT_TISSUE_HU[1]), f) & ~bone
    pixel_mm2 = dy * dx * f * f
    size = (2 * max(1, round(gap_mm / (dy * f))) + 1, 2 * max(1, round(gap_mm / (dx * f))) + 1)
    out = np.zeros(hu.shape[0], dtype=bool)
    for z in range(hu.shape[0]):
        if soft[z].sum() * pixel_mm2 < min_area_mm2 or not bone[z].any():
            continue
        # closing by a square (separable, fast): bridges gaps in the ring
        ring = ndimage.minimum_filter(ndimage.maximum_filter(bone[z], size=size, mode="constant"),
                                      size=size, mode="constant")
        _, area = _largest_component(_enclosed(ring) & soft[z])
        out[z] = area * pixel_mm2 >= min_area_mm2
    return _fill_short_gaps(out, int(CRANIAL_Z_GAP_MM // _slice_mm(spacing)))


def _slice_mm(spacing: Sequence[float] | None) -> float:
    return float(spacing[0]) if spacing is not None and len(spacing) == 3 else TYPICAL_SLICE_MM


def _fill_short_gaps(flags: np.ndarray, max_gap: int) -> np.ndarray:
    """Set runs of at most `max_gap` False values that lie between two True values to True."""
    idx = np.flatnonzero(flags)
    out = flags.copy()
    for a, b in zip(idx[:-1], idx[1:]):
        if 1 < b - a <= max_gap + 1:
            out[a + 1:b] = True
    return out


def head_mask(hu: np.ndarray, spacing: Sequence[float] | None = None,
              threshold: float = HEAD_THRESHOLD_HU) -> np.ndarray:
    """(H, W) or (Z, H, W) -> bool (H, W): the head in-plane (union over slices for a volume).

    Pixels above `threshold` (HU; pass e.g. 10 for an 8-bit windowed image) are opened with a
    6 mm disk, which removes the scanner table, headrest and burnt-in text, then the largest
    connected component is kept, holes filled. Unknown spacing assumes a 250 mm field of view.
    """
    hu = np.asarray(hu)
    if hu.ndim not in (2, 3) or min(hu.shape) == 0:
        raise InputError(f"head_mask expects (H, W) or (Z, H, W), got shape {hu.shape}")
    dense = hu > threshold
    if dense.ndim == 3:
        dense = dense.any(axis=0)
    head, _ = _largest_component(_open_mm(dense, TABLE_OPENING_MM, _pixel_mm(hu.shape, spacing)))
    return head | _enclosed(head)


def head_box(mask: np.ndarray, margin: int = 4) -> tuple[int, int, int, int] | None:
    """Bool (H, W) -> (row0, row1, col0, col1), half-open, widened by `margin` px; None if empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    h, w = mask.shape
    return (max(0, rows[0] - margin), min(h, rows[-1] + 1 + margin),
            max(0, cols[0] - margin), min(w, cols[-1] + 1 + margin))


def crop_to_head(img: np.ndarray, spacing: Sequence[float] | None = None, threshold: float = HEAD_THRESHOLD_HU,
                 margin: int = 4, blank_outside: bool = True, fill: float | None = None) -> np.ndarray:
    """(..., H, W) -> (..., h, w): the head's bounding box (same box for every leading index).

    With `blank_outside`, pixels off the head mask (dilated by `margin` px) are set to `fill`
    (default: the image minimum), so table fragments inside the box vanish too.
    No head found: the image is returned unchanged.
    """
    img = np.asarray(img)
    if img.ndim < 2 or min(img.shape) == 0:
        raise InputError(f"crop_to_head expects (..., H, W), got shape {img.shape}")
    mask = head_mask(img.reshape(-1, *img.shape[-2:]), spacing, threshold)
    box = head_box(mask, margin)
    if box is None:
        return img
    r0, r1, c0, c1 = box
    out = img[..., r0:r1, c0:c1]
    if blank_outside:
        keep = ndimage.binary_dilation(mask, iterations=max(1, margin))[r0:r1, c0:c1]
        out = out.copy()
        out[..., ~keep] = img.min() if fill is None else fill
    return out


@dataclass(frozen=True)
class PrepSpec:
    """How a HU volume becomes network input (saved in every bundle; part of every cache key).

    windows: names or 'center/width' strings, one output channel each.
    size: output slice side in pixels.
    max_filter: in-plane block-maximum factor (2 = the papers' 2x2; 1 = off). Applied only when
        the slice is larger than `size`; whatever remains is resized by area/bilinear.
    z_max_filter: also take the maximum of slice pairs (the 2x2x2 filter of the 3D model).
    crop_head: crop every slice to the head's in-plane bounding box (one box per volume).
    """

    windows: tuple[str, ...] = ("brain",)
    size: int = 256
    max_filter: int = 2
    z_max_filter: bool = False
    crop_head: bool = False

    def __post_init__(self) -> None:
        wins = (self.windows,) if isinstance(self.windows, str) else tuple(self.windows)
        object.__setattr__(self, "windows", tuple(str(w) for w in wins))
        if not self.windows:
            raise InputError("PrepSpec.windows must name at least one window, got none")
        for w in self.windows:
            parse_window(w)
        if not isinstance(self.size, (int, np.integer)) or isinstance(self.size, bool) or self.size < 8:
            raise InputError(f"PrepSpec.size must be an integer >= 8, got {self.size!r}")
        if not isinstance(self.max_filter, (int, np.integer)) or isinstance(self.max_filter, bool) or self.max_filter < 1:
            raise InputError(f"PrepSpec.max_filter must be an integer >= 1, got {self.max_filter!r}")
        for name in ("z_max_filter", "crop_head"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise InputError(f"PrepSpec.{name} must be true or false, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["windows"] = list(self.windows)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PrepSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown preprocessing keys {unknown}; expected some of {sorted(known)}")
        return cls(**{k: (tuple(v) if k == "windows" and not isinstance(v, str) else v) for k, v in d.items()})

    def key(self) -> str:
        """Stable, file-name-safe key; equal windows spelled differently give the same key."""
        names = {v: k for k, v in WINDOWS.items()}
        wins = "+".join(names.get(parse_window(w), f"c{parse_window(w).center:g}w{parse_window(w).width:g}")
                        for w in self.windows)
        return f"{wins}_s{self.size}_mf{self.max_filter}_z{int(self.z_max_filter)}_crop{int(self.crop_head)}"


def prepare_volume(volume: Volume | np.ndarray, spec: PrepSpec = PrepSpec()) -> np.ndarray:
    """A HU volume (Z, H, W) -> float32 (C, Z', size, size) in [0, 1], C = len(spec.windows).

    Always four axes, even for one window. Z' = Z, or ceil(Z/2) with `z_max_filter`.
    Order: head crop (one box) -> max filter -> pad to square + resize -> windows.
    """
    hu = volume.hu if isinstance(volume, Volume) else np.asarray(volume, dtype=np.float32)
    spacing = volume.spacing if isinstance(volume, Volume) else None
    if hu.ndim != 3 or min(hu.shape) == 0:
        raise InputError(f"prepare_volume expects a (Z, H, W) HU volume, got shape {hu.shape}")
    if spec.crop_head:
        hu = crop_to_head(hu, spacing, blank_outside=True, fill=AIR_HU)
    k = spec.max_filter if max(hu.shape[-2:]) > spec.size else 1
    if spec.z_max_filter and k == 2:
        hu = max_filter_3d(hu, 2)  # the papers' 2x2x2 filter, one pass
    else:
        hu = _block_max(hu, 2, (-3,)) if spec.z_max_filter else hu
        hu = max_filter_2d(hu, k)
    hu = resize_slices(hu, spec.size, fill=AIR_HU)
    return np.ascontiguousarray(window_stack(hu, spec.windows), dtype=np.float32)
