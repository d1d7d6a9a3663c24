"""What `predict` was pointed at -> the studies in it, one result each.

A file is one study (NIfTI, image, zip of a DICOM series, single DICOM). A folder holds one
study or many: its NIfTI files, images and zips are studies of their own, and its DICOM files
are grouped by StudyInstanceUID (headers only), so a folder of one series gives one study and a
folder of many patients gives one per study; the DICOM reader then picks the series of each.
A few images of another study stored beside a series (a scout, a dose report: fewer than
`MIN_STUDY_IMAGES` in that folder) join the main study of that folder instead of becoming a
study of their own. A file that claims to be DICOM but cannot be read joins the study of the
other files in its folder, so that study is reported as failed rather than read with a hole in it.
"""
from __future__ import annotations

import os
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ichdet.errors import InputError
from ichdet.io.dicom import _read_header
from ichdet.io.images import is_image
from ichdet.io.nifti import is_nifti
from ichdet.io.sources import list_files

MIN_STUDY_IMAGES = 3  # fewer images of a study beside another study's series join that study


@dataclass
class FoundStudy:
    """One study found on disk (`find_studies`), a scan to predict: `source` is what `read_volume` takes
    (a path, or a DICOM file list)."""

    label: str  # how the user names it: the file, or the folder that holds the study's files
    source: Path | list[Path]


def _is_single_scan_file(path: Path) -> bool:
    return is_nifti(path) or is_image(path) or path.suffix.lower() == ".zip" or zipfile.is_zipfile(path)


def find_studies(path: str | Path) -> list[FoundStudy]:
    """The studies under `path` (see the module docstring), in path order."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or folder", p)
    if p.is_file():
        return [FoundStudy(str(p), p)]
    if not p.is_dir():
        raise InputError("not a regular file or folder (a pipe, socket or device?)", p)
    singles: list[FoundStudy] = []
    groups: dict[str, list[Path]] = defaultdict(list)
    unreadable: dict[Path, list[Path]] = defaultdict(list)
    for f in list_files(p):
        if _is_single_scan_file(f):
            singles.append(FoundStudy(str(f), f))
            continue
        try:
            ds = _read_header(f)
        except InputError:
            unreadable[f.parent].append(f)
            continue
        if ds is None or "PixelData" not in ds:
            continue  # not an image (README, DICOMDIR-like, structured report)
        uid = str(ds.get("StudyInstanceUID", "") or f"(no StudyInstanceUID) {f.parent}")
        groups[uid].append(f)
    _merge_strays(groups)
    study_of_folder = {f.parent: uid for uid, files in groups.items() for f in files}
    for folder, files in unreadable.items():
        groups[study_of_folder.get(folder, f"(unreadable) {folder}")].extend(files)
    if not groups and not singles:
        raise InputError("found no scans (no DICOM series, NIfTI, image or zip files)", p)
    if len(groups) == 1 and not singles:
        return [FoundStudy(str(p), p)]
    folders = {uid: os.path.commonpath([str(f.parent) for f in files]) for uid, files in groups.items()}
    shared = {f for f in folders.values() if list(folders.values()).count(f) > 1}
    studies = singles + [FoundStudy(f"{folders[uid]} [study {uid[-12:]}]" if folders[uid] in shared else folders[uid],
                               sorted(files)) for uid, files in groups.items()]
    return sorted(studies, key=lambda s: s.label)


def _merge_strays(groups: dict[str, list[Path]]) -> None:
    """Move studies of fewer than MIN_STUDY_IMAGES files, all in one folder, into the largest
    study with at least MIN_STUDY_IMAGES files in that folder (in place)."""
    by_folder: dict[Path, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for uid, files in groups.items():
        for f in files:
            by_folder[f.parent][uid] += 1
    for uid in list(groups):
        folders = {f.parent for f in groups[uid]}
        if len(groups[uid]) >= MIN_STUDY_IMAGES or len(folders) != 1:
            continue
        counts = by_folder[folders.pop()]
        host = max((u for u in counts if u != uid and u in groups), key=lambda u: counts[u], default=None)
        if host is not None and counts[host] >= MIN_STUDY_IMAGES:
            groups[host].extend(groups.pop(uid))
