"""Measurements on label masks (no torch): bleed volume in mL per subtype, the bedside ABC/2 estimate
(volumes.py), and agreement with a reference: Dice, Bland-Altman, median with bootstrap CI (agreement.py).

A label mask is uint8 (Z, H, W) in a `Volume`'s geometry: 0 = no bleed, i + 1 = SUBTYPES[i];
spacing is `Volume.spacing`, (dz, dy, dx) in mm.
"""
from ichdet.measure.agreement import (
    bland_altman,
    dice,
    dice_per_label,
    error_summary,
    label_index,
    median_ci,
)
from ichdet.measure.volumes import (
    ABC2,
    C_RULES,
    ML_PER_MM3,
    abc2,
    bleed_box,
    check_label_mask,
    check_spacing,
    diameters_mm,
    label_volumes_ml,
    largest_lesion,
    slice_weights,
    voxel_ml,
)

__all__ = [
    "ABC2", "C_RULES", "ML_PER_MM3", "abc2", "bland_altman", "bleed_box", "check_label_mask", "check_spacing",
    "diameters_mm", "dice", "dice_per_label", "error_summary", "label_index", "label_volumes_ml", "largest_lesion",
    "median_ci", "slice_weights", "voxel_ml",
]
