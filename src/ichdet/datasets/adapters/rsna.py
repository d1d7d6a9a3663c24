"""RSNA 2019 intracranial haemorrhage: `stage_2_train.csv` + flat `stage_2_train/ID_<sop>.dcm` -> manifest.

Slices are grouped into scans by SeriesInstanceUID (headers only, no pixels), ordered by
ImagePositionPatient projected on the slice normal, and linked (or copied) into one folder per
scan, `<out dir>/rsna_series/<SeriesInstanceUID>/`, because a manifest path names a series folder.
Scan label = any slice positive; scan subtypes = OR over slices. Slice labels go to
`<out stem>_slices.csv` with slice_index 0 = the most inferior slice.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
from pathlib import Path

from ichdet.datasets.adapters.common import (
    Summary, check_out, manifest_path, or_subtypes, parse_binary, report_problems, require_dir,
    write_outputs,
)
from ichdet.datasets.adapters.dicom_headers import DicomHeader, order_slices, read_headers
from ichdet.datasets.manifest import SUBTYPES, ManifestRow, SliceLabel
from ichdet.errors import InputError
from ichdet.fileio import atomic_path

RSNA_CLASSES = SUBTYPES + ("any",)  # label slots, in this order
_ID = re.compile(r"^(ID_[0-9A-Za-z]+)_(" + "|".join(RSNA_CLASSES) + r")$")
SERIES_DIR = "rsna_series"
UNKNOWN = -1


def read_rsna_labels(path: str | Path) -> tuple[dict[str, list[int]], int]:
    """Parse `ID_<sop>_<subtype>,Label` rows -> ({'ID_<sop>': 6 slots (RSNA_CLASSES order, -1 unknown)},
    number of duplicate rows dropped). Conflicting duplicates and malformed rows raise InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError("label CSV not found", path)
    labels: dict[str, list[int]] = {}
    dropped = 0
    slot_of = {name: i for i, name in enumerate(RSNA_CLASSES)}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [c.strip() for c in next(reader, [])]
        if "ID" not in header or "Label" not in header:
            raise InputError(f"label CSV needs columns ID,Label; header is {header}", path)
        id_col, label_col = header.index("ID"), header.index("Label")
        for i, values in enumerate(reader, start=2):
            if not any(v.strip() for v in values):
                continue
            if len(values) <= max(id_col, label_col):
                raise InputError(f"row {i}: expected ID,Label, got {','.join(values)!r}", path)
            ident = values[id_col].strip()
            m = _ID.match(ident)
            if not m:
                raise InputError(f"row {i}: ID must look like ID_<sop>_<subtype> with subtype one of "
                                 f"{', '.join(RSNA_CLASSES)}, got {ident!r}", path)
            label = parse_binary(values[label_col], path, i, "Label")
            slots = labels.setdefault(m.group(1), [UNKNOWN] * len(RSNA_CLASSES))
            k = slot_of[m.group(2)]
            if slots[k] == UNKNOWN:
                slots[k] = label
            elif slots[k] == label:
                dropped += 1
            else:
                raise InputError(f"row {i}: {ident} has Label {label} but an earlier row gave "
                                 f"{slots[k]} (conflicting duplicate)", path)
    if not labels:
        raise InputError("label CSV has a header but no rows", path)
    return labels, dropped


def slice_label(slots: list[int]) -> tuple[int, dict[str, int]]:
    """(label, subtypes) of one slice: label = 'any' (or OR of subtypes when 'any' is absent)."""
    subs = dict(zip(SUBTYPES, slots[: len(SUBTYPES)]))
    known = {k: v for k, v in subs.items() if v != UNKNOWN}
    label = max([slots[-1]] + list(known.values()))
    subtypes = {k: max(v, 0) for k, v in subs.items()} if known else {}
    return max(label, 0), subtypes


def _safe_name(uid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", uid)


def _link_series(folder: Path, scans: dict[str, list[DicomHeader]], link: str) -> None:
    """Fill `folder` (atomically replaced) with one sub-folder of links/copies per scan."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for uid, slices in scans.items():
            d = tmp / _safe_name(uid)
            d.mkdir()
            for h in slices:
                src = Path(os.path.abspath(h.source))
                if link == "symlink":
                    os.symlink(src, d / src.name)
                else:
                    shutil.copy2(src, d / src.name)


def prepare_rsna(src: str | Path, out: str | Path, *, labels: str | Path | None = None,
                 images: str | Path | None = None, link: str = "symlink", workers: int = 1) -> Path:
    """Write the RSNA manifest (+ `<stem>_slices.csv` and `rsna_series/`); return the manifest path."""
    src, out = require_dir(src), check_out(out)
    if link not in ("symlink", "copy"):
        raise InputError(f"--link must be symlink or copy, got {link!r}")
    labels_path = Path(labels) if labels else src / "stage_2_train.csv"
    images_dir = require_dir(images if images else src / "stage_2_train", "image folder")
    slot_map, n_dup = read_rsna_labels(labels_path)
    summary = Summary("rsna")
    summary.skip("duplicate label rows", n_dup)

    with os.scandir(images_dir) as it:
        files = {e.name[:-4]: Path(e.path) for e in it if e.name.lower().endswith(".dcm") and e.is_file()}
    missing = [sop for sop in slot_map if sop not in files]
    if missing:
        report_problems("missing file", [f"{len(missing)} slice(s) in {labels_path} have no file in "
                                         f"{images_dir}, e.g. {missing[0]}.dcm"])
    summary.skip("slices without file", len(missing))
    summary.skip("files without labels", sum(1 for s in files if s not in slot_map))
    headers, problems = read_headers([files[s] for s in slot_map if s in files], workers=workers)
    report_problems("unreadable", problems)
    summary.skip("unreadable files", len(problems))

    by_series: dict[str, list[DicomHeader]] = {}
    for h in headers:
        by_series.setdefault(h.series_uid, []).append(h)
    scans: dict[str, list[DicomHeader]] = {}
    rows: list[ManifestRow] = []
    slice_rows: list[SliceLabel] = []
    series_root = out.parent / SERIES_DIR
    for uid, group in sorted(by_series.items()):
        try:
            ordered = order_slices(group)
        except ValueError as e:
            report_problems("unordered series", [f"{uid}: {e}"])
            summary.skip("series without geometry", 1)
            continue
        scans[uid] = ordered
        per_slice = [slice_label(slot_map[Path(h.source).name[:-4]]) for h in ordered]
        slice_rows += [SliceLabel(uid, k, lab, subs) for k, (lab, subs) in enumerate(per_slice)]
        first = ordered[0]
        rows.append(ManifestRow(
            scan_id=uid, patient_id=first.patient_id or first.study_uid or uid,
            path=manifest_path(series_root / _safe_name(uid), out),
            label=max(lab for lab, _ in per_slice), subtypes=or_subtypes([s for _, s in per_slice]),
            extra={"series_uid": uid, "study_uid": first.study_uid, "n_slices": str(len(ordered))}))
    if not rows:
        raise InputError(f"no readable labelled DICOM series in {images_dir}", labels_path)
    _link_series(series_root, scans, link)
    return write_outputs(out, rows, slice_rows, summary)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ichdet prepare rsna` (dest names are prepare_rsna's keyword arguments)."""
    parser.add_argument("--labels", type=Path, default=None,
                        help="label CSV (default: SRC/stage_2_train.csv)")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of ID_<sop>.dcm files (default: SRC/stage_2_train)")
    parser.add_argument("--link", choices=("symlink", "copy"), default="symlink",
                        help="how to fill <out dir>/rsna_series/<SeriesInstanceUID>/ (default: symlink)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes reading DICOM headers (default: 1)")
