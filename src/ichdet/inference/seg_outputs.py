"""What `predict` gives for a segmentation bundle besides the probability: the scan's `volumes`
(mL per subtype and in total, measured on the original series' voxels, with the largest lesion's
ABC/2 beside them) and the files `--out` writes per scan:

    mask.nii.gz   uint8 labels (0 none, i + 1 = SUBTYPES[i]) in the input's own geometry
    seg.dcm       DICOM Segmentation, one segment per subtype, frames on the source SOP instances
    sr.dcm        DICOM Structured Report (TID 1500): volumes, probability, model name and version

The two DICOM objects are written for DICOM input only (they reference the source instances).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ichdet.datasets.manifest import SUBTYPES
from ichdet.io.volume import Volume
from ichdet.measure.volumes import abc2, label_volumes_ml, voxel_ml

ML_DIGITS = 3  # mL reported to the microlitre
MASK_FILE, SEG_FILE, SR_FILE = "mask.nii.gz", "seg.dcm", "sr.dcm"


def volumes_entry(mask: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, Any]:
    """A label mask (Z, H, W) on the original voxels + their spacing (dz, dy, dx) mm -> the JSON
    `volumes` object: {"unit": "mL", "total", "subtypes": {name: mL}, "abc2": the largest lesion's
    ABC/2 (volume_ml, a_mm, b_mm, c_mm, slice_index, lesion_voxels), "voxel_ml"}."""
    vols = label_volumes_ml(mask, spacing)
    return {"unit": "mL", "total": round(vols["total"], ML_DIGITS),
            "subtypes": {s: round(vols[s], ML_DIGITS) for s in SUBTYPES},
            "abc2": {k: (round(v, ML_DIGITS) if isinstance(v, float) else v) for k, v in abc2(mask, spacing).as_dict().items()},
            "voxel_ml": voxel_ml(spacing)}


def is_dicom_series(volume: Volume) -> bool:
    """Whether `volume` was read from DICOM files on disk, one per slice (SEG and SR reference them;
    a series read from a zip archive has no files to reference)."""
    return volume.info.get("format") == "dicom" and len(volume.source) == volume.shape[0] and \
        all(Path(f).is_file() for f in volume.source)


def write_nifti_mask(mask: np.ndarray, volume: Volume, out: Path) -> Path:
    """The label mask as NIfTI (uint8) with the volume's RAS affine, atomically; (Z, H, W) is stored
    as (x, y, z) = (W, H, Z), as `ichdet synth` writes its masks and `read_volume` reads NIfTI."""
    import nibabel as nib

    from ichdet.fileio import atomic_path

    img = nib.Nifti1Image(np.ascontiguousarray(np.asarray(mask, np.uint8).transpose(2, 1, 0)), volume.affine_ras())
    img.header.set_xyzt_units("mm")
    with atomic_path(out, suffix=".nii.gz") as tmp:  # nibabel picks the format by extension
        nib.save(img, str(tmp))
    return out


def write_segmentation_outputs(out: Path, volume: Volume, mask: np.ndarray, volumes: dict[str, Any],
                               probability: float, threshold: float | None, model_name: str,
                               model_version: str) -> dict[str, str]:
    """Write mask.nii.gz (always) and, for DICOM input, seg.dcm and sr.dcm into `out`; returns
    {"mask", "seg", "sr"} -> path of each file written."""
    from ichdet.io.dicom_seg import write_dicom_seg
    from ichdet.io.dicom_sr import write_dicom_sr

    out.mkdir(parents=True, exist_ok=True)
    written = {"mask": str(write_nifti_mask(mask, volume, out / MASK_FILE))}
    if is_dicom_series(volume):
        seg = write_dicom_seg(mask, volume.source, out / SEG_FILE, algorithm_name=model_name,
                              algorithm_version=model_version)
        sr = write_dicom_sr(volume.source, out / SR_FILE, volumes_ml={**volumes["subtypes"], "total": volumes["total"]},
                            probability=probability, threshold=threshold, model_name=model_name,
                            model_version=model_version, seg_path=seg)
        written.update(seg=str(seg), sr=str(sr))
    return written
