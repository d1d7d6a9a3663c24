"""What the DICOM objects ichdet derives from a CT series (SEG, SR) share: the source headers read
and checked, the haemorrhage codes, and the equipment that made them.

The codes come from the DICOM content mapping resource as pydicom ships it (`pydicom.sr.codedict`):

- SCT 49755003 "Morphologically Abnormal Structure" (CID 7150, segmentation property category)
- SCT 50960005 "Hemorrhage" (CID 7151 / 7159, segmentation property type and finding type)
- SCT 1386000 "Intracranial hemorrhage" (the finding the probability is about)
- SCT 1101003 "Cranial Cavity" (CID 7140: the anatomic region every compartment lies in)
- SCT 118565006 "Volume" with UCUM "ml"; DCM 122157 "Probability" and DCM 122411 "Threshold
  Value" with UCUM "1" (no units)

The DICOM code dictionary (as pydicom ships it) has no codes for the epidural and subdural spaces,
so the compartment is named by the segment label and the tracking identifier
(``"<subtype> haemorrhage"``), not by a code.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ichdet import __version__
from ichdet.errors import InputError

MANUFACTURER = "ichdet"
# io sits below datasets, so it keeps its own copy of datasets.manifest.SUBTYPES (a test checks they agree)
SUBTYPE_NAMES = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")

CATEGORY = codes.SCT.MorphologicallyAbnormalStructure  # SCT 49755003
HEMORRHAGE = codes.SCT.Hemorrhage  # SCT 50960005
INTRACRANIAL_HEMORRHAGE = codes.SCT.IntracranialHemorrhage  # SCT 1386000
CRANIAL_CAVITY = codes.SCT.CranialCavity  # SCT 1101003
VOLUME = codes.SCT.Volume  # SCT 118565006
PROBABILITY = codes.DCM.Probability  # DCM 122157
THRESHOLD = codes.DCM.ThresholdValue  # DCM 122411
MILLILITRE = Code("ml", "UCUM", "milliliter")
NO_UNITS = codes.UCUM.NoUnits  # UCUM "1"
AI_FAMILY = codes.cid7162.ArtificialIntelligence  # DCM 123110 (CID 7162 Algorithm Family)

# Type 2 attributes highdicom copies from the first source image: present (maybe empty) in every
# object we write, even when an anonymised source dropped them.
TYPE2_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                  "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")
DEIDENTIFICATION_UNKNOWN = "not recorded in the source images"
REQUIRED_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def read_source_headers(source_files: Sequence[str | Path]) -> list[Dataset]:
    """The headers (no pixel data) of `source_files`, in the order given, checked to be one series.

    Missing Type 2 patient/study attributes are added empty, so highdicom can copy them; a series
    de-identified without saying how (PatientIdentityRemoved YES, no DeidentificationMethod) gets
    `DEIDENTIFICATION_UNKNOWN`, which the objects derived from it must carry.
    """
    if len(source_files) == 0:
        raise InputError("no source DICOM files given")
    headers: list[Dataset] = []
    for f in source_files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except FileNotFoundError:
            raise InputError("source DICOM file not found", f) from None
        except (InvalidDicomError, OSError) as e:
            raise InputError(f"cannot read source DICOM file ({e.__class__.__name__}: {e})", f) from None
        for kw in REQUIRED_KEYWORDS:
            if not ds.get(kw):
                raise InputError(f"{kw} is missing; a derived object cannot reference this file", f)
        for kw in TYPE2_KEYWORDS:
            if kw not in ds:
                setattr(ds, kw, "")
        if str(ds.get("PatientIdentityRemoved", "")).upper() == "YES" and not (
                ds.get("DeidentificationMethod") or ds.get("DeidentificationMethodCodeSequence")):
            ds.DeidentificationMethod = DEIDENTIFICATION_UNKNOWN  # Type 1C when identity was removed (CQ500)
        headers.append(ds)
    series = str(headers[0].SeriesInstanceUID)
    for ds, f in zip(headers, source_files):
        if str(ds.SeriesInstanceUID) != series:
            raise InputError(f"SeriesInstanceUID {ds.SeriesInstanceUID} differs from the first file's {series}; "
                             "source files must be one series", f)
    return headers


def algorithm_identification(name: str, version: str) -> hd.AlgorithmIdentificationSequence:
    """The SEG's Segment Algorithm Identification: `name` `version`, family Artificial Intelligence."""
    return hd.AlgorithmIdentificationSequence(name=name, family=AI_FAMILY, version=version, source=MANUFACTURER)


def software_versions() -> str:
    return f"ichdet {__version__}"


def check_name(value: str, what: str, max_len: int = 64) -> str:
    """A non-empty LO value (name or version) of at most 64 characters."""
    text = str(value).strip()
    if not text or len(text) > max_len or "\\" in text:
        raise InputError(f"{what} must be 1..{max_len} characters without a backslash, got {value!r}")
    return text


@contextlib.contextmanager
def quiet_highdicom() -> Iterator[None]:
    """Silence what highdicom says about the source images while it builds an object (single-part
    patient names, spacing it infers for a tilted or gapped series): the source is not ours to fix."""
    log = logging.getLogger("highdicom")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        log.setLevel(level)
