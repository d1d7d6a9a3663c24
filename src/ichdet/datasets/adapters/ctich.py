"""PhysioNet CT-ICH: `ct_scans/<NNN>.nii` (+ `masks/`) and `hemorrhage_diagnosis_raw_ct.csv` -> manifest.

One scan per patient. `SliceNumber` (1-based, in the NIfTI's k order) becomes slice_index counted
from the most inferior slice, from the header affine alone (no voxel data is loaded): when the k
axis points inferior (RAS affine[2, 2] < 0) the order is reversed. Slice label = 1 - No_Hemorrhage;
scan label = any slice positive; subtypes OR over slices. A scan's mask (`masks/<NNN>.nii`) goes in
the `mask_path` column with `mask_labels` "any": CT-ICH masks mark bleed (0/1 or 0/255) but not its
subtype (segmentation trains them as bleed vs background, `ichdet.io.masks`).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
from nibabel.filebasedimages import ImageFileError

from ichdet.datasets.adapters.common import (
    CsvTable, Summary, check_out, manifest_path, or_subtypes, parse_binary, parse_int, read_csv,
    report_problems, require_dir, write_outputs,
)
from ichdet.datasets.manifest import ManifestRow, SliceLabel
from ichdet.errors import InputError

LABEL_FILES = ("hemorrhage_diagnosis_raw_ct.csv", "hemorrhage_diagnosis.csv")
CTICH_SUBTYPES = {"Intraventricular": "intraventricular", "Intraparenchymal": "intraparenchymal",
                  "Subarachnoid": "subarachnoid", "Epidural": "epidural", "Subdural": "subdural"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class SliceRecord:
    """One CSV row: its row number, the slice label, subtypes and the fracture flag."""

    row: int
    label: int
    subtypes: dict[str, int] = field(default_factory=dict)
    fracture: int | None = None


def read_diagnosis(path: str | Path) -> tuple[dict[int, dict[int, SliceRecord]], int]:
    """Parse the per-slice CSV -> ({patient: {SliceNumber: SliceRecord}}, duplicate rows dropped)."""
    table: CsvTable = read_csv(Path(path), "diagnosis CSV")
    table.require("PatientNumber", "SliceNumber", "No_Hemorrhage")
    subtype_cols = [c for c in CTICH_SUBTYPES if c in table.header]
    has_fracture = "Fracture_Yes_No" in table.header
    out: dict[int, dict[int, SliceRecord]] = {}
    dropped = 0
    for i, rec in table.rows:
        patient = parse_int(rec["PatientNumber"], table.path, i, "PatientNumber", minimum=0)
        number = parse_int(rec["SliceNumber"], table.path, i, "SliceNumber", minimum=1)
        r = SliceRecord(
            row=i, label=1 - parse_binary(rec["No_Hemorrhage"], table.path, i, "No_Hemorrhage"),
            subtypes={CTICH_SUBTYPES[c]: parse_binary(rec[c], table.path, i, c) for c in subtype_cols},
            fracture=parse_binary(rec["Fracture_Yes_No"], table.path, i, "Fracture_Yes_No") if has_fracture else None)
        slices = out.setdefault(patient, {})
        prev = slices.get(number)
        if prev is None:
            slices[number] = r
        elif (prev.label, prev.subtypes, prev.fracture) == (r.label, r.subtypes, r.fracture):
            dropped += 1
        else:
            raise InputError(f"row {i}: PatientNumber {patient} SliceNumber {number} conflicts with "
                             f"row {prev.row}", table.path)
    if not out:
        raise InputError("diagnosis CSV has a header but no rows", table.path)
    return out, dropped


def nifti_slices(path: Path) -> tuple[int, bool]:
    """(number of k slices, whether k points inferior) from the NIfTI header only."""
    img = nib.load(str(path))
    shape = img.shape
    if len(shape) < 3 or any(s != 1 for s in shape[3:]):
        raise ValueError(f"expected a 3-D volume, got shape {tuple(shape)}")
    return int(shape[2]), bool(img.affine[2, 2] < 0)


def slice_index(number: int, n_slices: int, k_inferior: bool) -> int:
    """1-based SliceNumber in k order -> slice_index from the most inferior slice."""
    return n_slices - number if k_inferior else number - 1


def _nifti_files(folder: Path) -> dict[str, Path]:
    """{stem without .nii/.nii.gz: path} of the NIfTI files in `folder`."""
    out = {}
    for p in sorted(folder.iterdir()):
        for suffix in NIFTI_SUFFIXES:
            if p.is_file() and p.name.lower().endswith(suffix):
                out[p.name[: -len(suffix)]] = p
    return out


def _patient_number(stem: str) -> int | None:
    return int(stem) if stem.isdigit() else None


def prepare_ctich(src: str | Path, out: str | Path, *, labels: str | Path | None = None,
                  scans: str | Path | None = None, masks: str | Path | None = None) -> Path:
    """Write the CT-ICH manifest and `<stem>_slices.csv`; return the manifest path."""
    src, out = require_dir(src), check_out(out)
    if labels:
        labels_path = Path(labels)
    else:
        labels_path = next((src / n for n in LABEL_FILES if (src / n).is_file()), src / LABEL_FILES[0])
    volumes = _nifti_files(require_dir(scans if scans else src / "ct_scans", "CT scan folder"))
    mask_dir = Path(masks) if masks else src / "masks"
    mask_files = _nifti_files(mask_dir) if mask_dir.is_dir() else {}
    diagnosis, n_dup = read_diagnosis(labels_path)
    summary = Summary("ctich")
    summary.skip("duplicate label rows", n_dup)

    rows: list[ManifestRow] = []
    slice_rows: list[SliceLabel] = []
    problems: list[str] = []
    matched: set[int] = set()
    for stem, vol in volumes.items():
        patient = _patient_number(stem)
        if patient not in diagnosis:
            summary.skip("volumes without labels", 1)
            continue
        try:
            n_k, k_inferior = nifti_slices(vol)
        except (ImageFileError, OSError, ValueError, EOFError) as e:
            problems.append(f"{vol}: {e.__class__.__name__}: {e}")
            continue
        matched.add(patient)
        records = diagnosis[patient]
        for number, r in sorted(records.items()):
            if number > n_k:
                raise InputError(f"row {r.row}: SliceNumber {number} is beyond the {n_k} slices of {vol}",
                                 labels_path)
            slice_rows.append(SliceLabel(stem, slice_index(number, n_k, k_inferior), r.label, dict(r.subtypes)))
        extra = {"n_slices": str(n_k)}
        if any(r.fracture is not None for r in records.values()):
            extra["fracture"] = str(max(r.fracture or 0 for r in records.values()))
        if stem in mask_files:
            extra["mask_path"] = manifest_path(mask_files[stem], out)
            extra["mask_labels"] = "any"
        rows.append(ManifestRow(scan_id=stem, patient_id=stem, path=manifest_path(vol, out),
                                label=max(r.label for r in records.values()),
                                subtypes=or_subtypes([r.subtypes for r in records.values()]), extra=extra))
    report_problems("unreadable", problems)
    summary.skip("unreadable volumes", len(problems))
    summary.skip("labelled patients without volume", len(set(diagnosis) - matched - {
        _patient_number(s) for s in volumes}))
    if not rows:
        raise InputError(f"no NIfTI volume matches a PatientNumber of {labels_path}", src)
    return write_outputs(out, rows, slice_rows, summary)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ichdet prepare ctich` (dest names are prepare_ctich's keyword arguments)."""
    parser.add_argument("--labels", type=Path, default=None,
                        help="per-slice CSV (default: SRC/hemorrhage_diagnosis_raw_ct.csv)")
    parser.add_argument("--scans", type=Path, default=None, help="NIfTI folder (default: SRC/ct_scans)")
    parser.add_argument("--masks", type=Path, default=None,
                        help="mask folder, recorded in the 'mask_path' column (default: SRC/masks if present)")
