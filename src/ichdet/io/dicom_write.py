"""Write a `Volume` as a DICOM CT series that other tools (SimpleITK, dcm2niix, viewers) read back."""
from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, PYDICOM_IMPLEMENTATION_UID,
                         RLELossless, generate_uid)

from ichdet import __version__
from ichdet.errors import InputError
from ichdet.fileio import atomic_path
from ichdet.io.volume import Volume

INTERCEPT_HU = -1024.0  # stored = HU + 1024, signed 16-bit
SYNTAXES = {"explicit": ExplicitVRLittleEndian, "rle": RLELossless, "jpeg2000": JPEG2000Lossless}


def _uid(seed: str) -> str:
    return generate_uid(entropy_srcs=[seed])


def _base_dataset(volume: Volume, patient_name: str, series_description: str, study_uid: str, series_uid: str) -> Dataset:
    ds = Dataset()
    today = dt.date.today().strftime("%Y%m%d")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "000000"
    ds.Modality = "CT"
    ds.Manufacturer = "ichdet"
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = volume.patient_id or "ANON"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.FrameOfReferenceUID = _uid(series_uid + "/for")
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.SliceThickness = f"{volume.spacing[0]:.4g}"
    ds.SpacingBetweenSlices = f"{volume.spacing[0]:.4g}"
    ds.KVP = "120"
    tilt = volume.gantry_tilt_deg
    ds.GantryDetectorTilt = f"{tilt:.3f}" if tilt > 0.01 else "0"
    d = volume.direction
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*d[:, 0], *d[:, 1])]
    ds.PixelSpacing = [f"{volume.spacing[1]:.6g}", f"{volume.spacing[2]:.6g}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[2])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = f"{INTERCEPT_HU:g}", "1", "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "80"
    return ds


def write_dicom_series(volume: Volume, out_dir: str | Path, *, patient_name: str = "ANONYMOUS",
                       series_description: str = "", transfer_syntax: str = "explicit") -> list[Path]:
    """Write one file per slice (``IM00001.dcm`` ... inferior first) into `out_dir`, atomically.

    HU are rounded and stored as int16 with intercept -1024. `transfer_syntax` is ``explicit``
    (uncompressed), ``rle`` or ``jpeg2000`` (lossless). Positions follow the volume's affine, so a
    tilted volume is written with its tilt. Returns the files in slice order.
    """
    if transfer_syntax not in SYNTAXES:
        raise InputError(f"transfer_syntax must be one of {sorted(SYNTAXES)}, got {transfer_syntax!r}")
    out_dir = Path(out_dir)
    key = hashlib.sha1(f"{volume.series_uid}|{volume.patient_id}|{volume.shape}".encode()).hexdigest()
    study_uid = volume.study_uid or _uid(key + "/study")
    series_uid = volume.series_uid or _uid(key + "/series")
    base = _base_dataset(volume, patient_name, series_description, study_uid, series_uid)
    stored = np.clip(np.rint(volume.hu) - INTERCEPT_HU, -32768, 32767).astype(np.int16)  # round HU like write_nifti
    syntax = SYNTAXES[transfer_syntax]
    names = [f"IM{k + 1:05d}.dcm" for k in range(volume.shape[0])]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for k, name in enumerate(names):
            ds = base.copy()
            sop = _uid(f"{series_uid}/{k}")
            ds.SOPInstanceUID = sop
            ds.InstanceNumber = k + 1
            pos = volume.affine @ np.array([0.0, 0.0, float(k), 1.0])
            ds.ImagePositionPatient = [f"{v:.4f}" for v in pos[:3]]
            ds.SliceLocation = f"{float(pos[:3] @ volume.slice_normal):.4f}"
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = sop
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            meta.ImplementationVersionName = f"ICHDET_{__version__}"[:16]
            ds.file_meta = meta
            ds.PixelData = stored[k].tobytes()
            if syntax != ExplicitVRLittleEndian:
                ds.compress(syntax, stored[k])
            ds.save_as(tmp / name, enforce_file_format=True)
    return [out_dir / n for n in names]
