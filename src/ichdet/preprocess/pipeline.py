"""The preprocessing pipeline: `PrepSpec` and `prepare_volume`, from a HU volume to network input,
and `slice_map`, which source slices each prepared slice covers."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
import math
from typing import Any, Mapping

import numpy as np

from ichdet.errors import InputError
from ichdet.io.volume import Volume
from ichdet.preprocess.anatomy import crop_to_head
from ichdet.preprocess.downsample import AIR_HU, _block_max, max_filter_2d, max_filter_3d, resize_slices
from ichdet.preprocess.slabs import series_spacing, slab_max, slab_size
from ichdet.preprocess.slices import SliceMap
from ichdet.preprocess.windows import WINDOWS, parse_window, window_stack

DISPLAY_HEAD_THRESHOLD = 0.1  # display intensity above which a windowed image shows tissue (air is ~0)
Z_MAX_FILTER = 2  # source slices merged into one prepared slice by `z_max_filter` (the 2x2x2 filter)


@dataclass(frozen=True)
class PrepSpec:
    """How a HU volume becomes network input (saved in every bundle; part of every cache key).

    windows: names or 'center/width' strings, one output channel each.
    size: output slice side in pixels.
    max_filter: in-plane block-maximum factor (2 = the papers' 2x2; 1 = off). Applied only when
        the slice is larger than `size`; whatever remains is resized by area/bilinear.
    z_max_filter: also take the maximum of slice pairs (the 2x2x2 filter of the 3D model).
    crop_head: crop every slice to the head's in-plane bounding box (one box per volume).
    slab_mm: first merge runs of consecutive source slices into slabs of about this thickness (mm),
        by their maximum (`ichdet.preprocess.slabs`): the training slice thickness, so a thin
        series reaches the model as the scans it was trained on. None (the default): slices as
        they are. Left out of `to_dict` and `key` when None, so existing specs keep their keys.
    grey: a HU volume gets only the first window, copied into every channel, which is what an
        already windowed display image (PNG/JPEG) gives (`prepare_display_image`): the input of a
        model trained on such images. Left out of `to_dict` and `key` when false.
    """

    windows: tuple[str, ...] = ("brain",)
    size: int = 256
    max_filter: int = 2
    z_max_filter: bool = False
    crop_head: bool = False
    slab_mm: float | None = None
    grey: bool = False

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
        for name in ("z_max_filter", "crop_head", "grey"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise InputError(f"PrepSpec.{name} must be true or false, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))
        if self.slab_mm is not None:
            ok = isinstance(self.slab_mm, (int, float, np.integer, np.floating)) and not isinstance(self.slab_mm, bool)
            if not ok or not math.isfinite(float(self.slab_mm)) or float(self.slab_mm) <= 0:
                raise InputError(f"PrepSpec.slab_mm must be a positive number of mm or null, got {self.slab_mm!r}")
            object.__setattr__(self, "slab_mm", float(self.slab_mm))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["windows"] = list(self.windows)
        if self.slab_mm is None:
            del d["slab_mm"]
        if not self.grey:
            del d["grey"]
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
        slab = "" if self.slab_mm is None else f"_slab{self.slab_mm:g}"
        grey = "_grey" if self.grey else ""
        return f"{wins}_s{self.size}_mf{self.max_filter}_z{int(self.z_max_filter)}_crop{int(self.crop_head)}{slab}{grey}"


def prepare_display_image(image: np.ndarray, spec: PrepSpec = PrepSpec()) -> np.ndarray:
    """An already windowed image (1, H, W) in [0, 1] (PNG/JPEG) -> float32 (C, 1, size, size).

    Windows cannot be applied to display intensities, so each of the C = len(spec.windows)
    channels holds the same grey image. With `crop_head` the image is cropped to the head's box
    and everything off the head mask is set to black, so that image size, borders, the scanner
    table and burnt-in text do not reach the network.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3 or img.shape[0] != 1 or min(img.shape) == 0:
        raise InputError(f"prepare_display_image expects a (1, H, W) image, got shape {img.shape}")
    if spec.crop_head:
        img = crop_to_head(img, None, threshold=DISPLAY_HEAD_THRESHOLD, blank_outside=True, fill=0.0)
    img = max_filter_2d(img, spec.max_filter if max(img.shape[-2:]) > spec.size else 1)
    img = np.clip(resize_slices(img, spec.size, fill=0.0), 0.0, 1.0)
    return np.ascontiguousarray(np.repeat(img[None], len(spec.windows), axis=0), dtype=np.float32)


def prepare_volume(volume: Volume | np.ndarray, spec: PrepSpec = PrepSpec()) -> np.ndarray:
    """A HU volume (Z, H, W) -> float32 (C, Z', size, size) in [0, 1], C = len(spec.windows).

    Always four axes, even for one window. Z' = Z, or ceil(Z/2) with `z_max_filter`, each after
    slabs of `spec.slab_mm` (a Volume with a z spacing only); `slice_map` says which source slices
    each prepared slice covers.
    Order: slabs -> head crop (one box) -> max filter -> pad to square + resize -> windows
    (with `spec.grey`: the first window in every channel).
    A Volume read from a PNG/JPEG (``info["units"] == "display"``) goes to `prepare_display_image`.
    """
    if isinstance(volume, Volume) and volume.info.get("units") == "display":
        return prepare_display_image(volume.hu, spec)
    hu = volume.hu if isinstance(volume, Volume) else np.asarray(volume, dtype=np.float32)
    spacing = volume.spacing if isinstance(volume, Volume) else None
    if hu.ndim != 3 or min(hu.shape) == 0:
        raise InputError(f"prepare_volume expects a (Z, H, W) HU volume, got shape {hu.shape}")
    if spec.slab_mm is not None and isinstance(volume, Volume):
        hu = slab_max(hu, slab_size(series_spacing(volume), spec.slab_mm))
    if spec.crop_head:
        hu = crop_to_head(hu, spacing, blank_outside=True, fill=AIR_HU)
    k = spec.max_filter if max(hu.shape[-2:]) > spec.size else 1
    if spec.z_max_filter and k == Z_MAX_FILTER:
        hu = max_filter_3d(hu, Z_MAX_FILTER)  # the papers' 2x2x2 filter, one pass
    else:
        hu = _block_max(hu, Z_MAX_FILTER, (-3,)) if spec.z_max_filter else hu
        hu = max_filter_2d(hu, k)
    hu = resize_slices(hu, spec.size, fill=AIR_HU)
    stack = window_stack(hu, spec.windows[:1] if spec.grey else spec.windows)
    if spec.grey:  # the first window in every channel, as a display image fills them
        stack = np.repeat(stack, len(spec.windows), axis=0)
    return np.ascontiguousarray(stack, dtype=np.float32)


def z_block(spec: PrepSpec, spacing_mm: float | None, display: bool = False) -> int:
    """Consecutive source slices per prepared slice of a volume whose slices are `spacing_mm`
    apart (None: unknown): the slab size (`slab_size(spacing_mm, spec.slab_mm)`) times 2 with
    `z_max_filter`, whose pairs of slabs are runs of 2k source slices; 1 for a PNG/JPEG image."""
    if display:
        return 1
    return slab_size(spacing_mm, spec.slab_mm) * (Z_MAX_FILTER if spec.z_max_filter else 1)


def slice_map(volume: Volume, spec: PrepSpec = PrepSpec()) -> SliceMap:
    """The `SliceMap` of `prepare_volume(volume, spec)`: prepared slice j covers the source slices
    of its slab (k of them, `spec.slab_mm`; k = 1 without) or, with `z_max_filter`, of its pair of
    slabs, 2k source slices from 2jk (the last group possibly shorter); a PNG/JPEG image
    (``info["units"] == "display"``) is one slice and never merged."""
    return SliceMap.of_volume(volume, z_block(spec, series_spacing(volume), volume.info.get("units") == "display"))
