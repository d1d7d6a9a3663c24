"""From a HU volume to network input: windows, maximum-filter downsampling, resizing,
cranial-cavity slice selection, head cropping, slabs of the training slice thickness (`slab_plan`),
`prepare_volume` that chains them, and `slice_map` (a `SliceMap`: which source slices each prepared
slice covers, their z positions and files).

The maximum filter follows the papers (sec. 3.3.1-3.3.2): a 2x2 block maximum takes 512x512
slices to 256x256 and a 2x2x2 one halves a volume, so a small bright bleed survives where an
average would dilute it. Every function takes numpy arrays; `window`, `window_stack` and the
max filters also take torch tensors and return the same kind.
"""
from __future__ import annotations

from ichdet.preprocess.anatomy import (
    BONE_THRESHOLD_HU, CRANIAL_PIXEL_MM, CRANIAL_Z_GAP_MM, HEAD_THRESHOLD_HU, MIN_CRANIAL_AREA_MM2, SKULL_GAP_MM,
    SOFT_TISSUE_HU, TABLE_OPENING_MM, TYPICAL_HEAD_FOV_MM, TYPICAL_SLICE_MM, cranial_cavity, cranial_slices,
    crop_to_head, head_box, head_mask,
)
from ichdet.preprocess.downsample import AIR_HU, MAX_FILTER_CHUNK, fit_to_square, max_filter_2d, max_filter_3d, resize_slices
from ichdet.preprocess.pipeline import PrepSpec, prepare_volume, slice_map, z_block
from ichdet.preprocess.slabs import SlabPlan, series_spacing, slab_max, slab_plan, slab_size
from ichdet.preprocess.slices import SliceMap, merge_groups, slice_groups
from ichdet.preprocess.windows import (
    BONE_WINDOW, BRAIN_WINDOW, SOFT_TISSUE_WINDOW, SUBDURAL_WINDOW, WINDOWS, ArrayT, Window, parse_window, window,
    window_stack,
)

__all__ = [
    "AIR_HU", "BONE_THRESHOLD_HU", "BONE_WINDOW", "BRAIN_WINDOW", "CRANIAL_PIXEL_MM", "CRANIAL_Z_GAP_MM",
    "HEAD_THRESHOLD_HU", "MAX_FILTER_CHUNK", "MIN_CRANIAL_AREA_MM2", "SKULL_GAP_MM", "SOFT_TISSUE_HU",
    "SOFT_TISSUE_WINDOW", "SUBDURAL_WINDOW", "TABLE_OPENING_MM", "TYPICAL_HEAD_FOV_MM", "TYPICAL_SLICE_MM", "WINDOWS",
    "ArrayT", "PrepSpec", "SlabPlan", "SliceMap", "merge_groups", "slice_groups", "Window", "cranial_cavity", "cranial_slices", "crop_to_head", "fit_to_square", "head_box",
    "head_mask", "max_filter_2d", "max_filter_3d", "parse_window", "prepare_volume", "resize_slices", "series_spacing",
    "slab_max", "slab_plan", "slab_size", "slice_map", "window", "window_stack", "z_block",
]
