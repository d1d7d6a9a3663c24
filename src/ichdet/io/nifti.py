"""Read and write NIfTI volumes; any stored orientation comes back as axial slices, inferior first."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from ichdet.errors import InputError
from ichdet.fileio import atomic_path
from ichdet.io.volume import Volume

LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MAX_VOXELS = 2**31 // 4  # refuse headers that would allocate more than 2 GiB of float32
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | Path) -> bool:
    name = str(path).lower()
    return name.endswith(NIFTI_SUFFIXES)


def _fmt(affine: np.ndarray) -> str:
    """A 4 x 4 affine as a user reads it in a message."""
    return "[" + ", ".join("[" + ", ".join(f"{float(v) + 0.0:.6g}" for v in row) + "]" for row in affine) + "]"


def read_nifti(path: str | Path) -> Volume:
    """Read a 3D NIfTI (HU) into a Volume: ``hu`` (Z, H, W) with columns toward patient left,
    rows toward posterior and slices inferior -> superior, whatever the stored orientation."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    try:
        img = nib.load(str(path))
    except Exception as e:  # noqa: BLE001 - nibabel raises many types on damaged files
        raise InputError(f"not a readable NIfTI file ({e.__class__.__name__}: {e})", path) from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"expected a 3D volume, got shape {tuple(img.shape)}", path)
    if min(shape) < 1 or int(np.prod(shape)) > MAX_VOXELS:
        raise InputError(f"header dimensions {shape} are empty or too large", path)
    if not path.name.lower().endswith(".gz"):
        offset = int(getattr(img.header, "get_data_offset", lambda: 0)())
        need = offset + int(np.prod(shape)) * img.header.get_data_dtype().itemsize
        if path.stat().st_size < need:
            raise InputError(f"file holds {path.stat().st_size} bytes but header dimensions {shape} need {need}: truncated", path)
    affine = img.affine
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"affine is singular or not finite: {affine.tolist()}", path)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except (EOFError, OSError, ValueError, Exception) as e:  # noqa: BLE001 - gzip/zlib errors vary
        raise InputError(f"voxel data cannot be read ({e.__class__.__name__}: {e}): truncated or corrupt", path) from None
    n_nan = int(np.count_nonzero(~np.isfinite(data)))
    if n_nan:
        raise InputError(f"{n_nan} voxel(s) are NaN or infinite", path)
    try:
        ornt = ornt_transform(io_orientation(affine), axcodes2ornt(("L", "P", "S")))
        stored_orientation = "".join(nib.aff2axcodes(affine))
    except ValueError as e:  # an affine whose axes do not map one-to-one onto L, P and S
        raise InputError(f"affine {_fmt(affine)} gives no orientation ({e})", path) from None
    data = nib.orientations.apply_orientation(data, ornt)
    affine_ras = affine @ inv_ornt_aff(ornt, shape)
    hu = np.ascontiguousarray(data.transpose(2, 1, 0), dtype=np.float32)  # (i, j, k) -> (k, j, i)
    affine_lps = LPS_RAS @ affine_ras
    cols = affine_lps[:3, :3]
    normal = np.cross(cols[:, 0], cols[:, 1])
    normal /= np.linalg.norm(normal)
    dz = abs(float(cols[:, 2] @ normal))
    vol = Volume(hu=hu, spacing=(dz, float(np.linalg.norm(cols[:, 1])), float(np.linalg.norm(cols[:, 0]))),
                 affine=affine_lps, source=[str(path)], series_uid="", patient_id="")
    warn = []
    lo, hi = float(hu.min()), float(hu.max())
    if lo >= 0 and hi > 1000:
        warn.append(f"values range {lo:.0f}..{hi:.0f}: no air at -1000, are these Hounsfield units?")
    vol.info.update({"format": "nifti", "stored_orientation": stored_orientation, "warnings": warn})
    return vol


def write_nifti(volume: Volume, path: str | Path, dtype: str = "int16") -> Path:
    """Write `volume` as NIfTI (RAS affine in sform and qform); int16 rounds HU, float32 keeps them."""
    path = Path(path)
    if not is_nifti(path):
        raise InputError("NIfTI output must end in .nii or .nii.gz", path)
    if dtype == "int16":
        data = np.clip(np.rint(volume.hu), -32768, 32767).astype(np.int16)
    elif dtype == "float32":
        data = volume.hu.astype(np.float32)
    else:
        raise InputError(f"dtype must be 'int16' or 'float32', got {dtype!r}")
    img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), volume.affine_ras())
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(volume.affine_ras(), code=1)
    img.set_qform(volume.affine_ras(), code=1)
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    return path
