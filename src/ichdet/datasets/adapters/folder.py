"""2D image sets: a folder of PNG/JPEG/DICOM images + a labels CSV -> one manifest row per image.

The CSV's first column (or `id_column`) is an id matching the file stem, zero padding ignored
(`7` matches `007.png`, `007` matches `7.jpg`). The label column is `label_column`, or else the
only other column holding just 0/1. The Kaggle layout `SRC/head_ct/[head_ct/]*.png` +
`SRC/labels.csv` is found automatically: the CSV is SRC/labels.csv or the only CSV near SRC, the
images are SRC itself or the only folder below it that holds images. Columns named like the
subtypes (epidural, intraparenchymal, intraventricular, subarachnoid, subdural; case and spaces
ignored) are carried into the manifest as the images' subtype labels (an empty cell: unknown),
and are not label candidates while another 0/1 column is. `patient_column`, or else the first column
with a usual patient name (`PATIENT_COLUMNS`, case and spaces ignored), groups a patient's images;
without one each image is its own patient (an `InputWarning` says so).
"""
from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

import pydicom
from PIL import Image, UnidentifiedImageError

from ichdet.datasets.adapters.common import (
    CsvTable, Summary, check_out, manifest_path, parse_binary, read_csv, report_problems, require_dir,
    slices_path, write_outputs,
)
from ichdet.datasets.adapters.dicom_headers import READ_ERRORS
from ichdet.datasets.manifest import SUBTYPES, ManifestRow
from ichdet.errors import InputError, InputWarning

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".bmp", ".tif", ".tiff")
SEARCH_DEPTH = 3  # folder levels below SRC searched for images and a CSV
PATIENT_COLUMNS = ("patient", "patient_id", "patientid", "patient id", "subject", "subject_id")


def id_key(value: str) -> str:
    """Normalise an id or file stem for matching: '007' -> '7', '7.0' -> '7', 'a.png' -> 'a'."""
    v = value.strip()
    if v.lower().endswith(IMAGE_SUFFIXES):
        v = v.rsplit(".", 1)[0]
    if re.fullmatch(r"\d+(\.0*)?", v):
        return str(int(float(v)) if "." in v else int(v))
    return v


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _folders(src: Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """`src` and its sub-folders down to `depth` levels, hidden ones left out."""
    out, level = [src], [src]
    for _ in range(depth):
        level = [c for d in level for c in sorted(d.iterdir()) if c.is_dir() and not c.name.startswith(".")]
        out += level
    return out


def find_layout(src: Path, labels: Path | None, images: Path | None,
                ignore: tuple[Path, ...] = ()) -> tuple[Path, Path]:
    """(labels CSV, image folder), given or found under `src` (see the module docstring).

    CSVs in `ignore` (our own outputs from an earlier run) are not label candidates.
    """
    folders = _folders(src)
    if labels is None:
        skip = {p.resolve() for p in ignore}
        csvs = [src / "labels.csv"] if (src / "labels.csv").is_file() else \
            [p for d in folders for p in sorted(d.glob("*.csv")) if p.resolve() not in skip]
        if len(csvs) != 1:
            found = ", ".join(str(p) for p in csvs) or "none"
            raise InputError(f"cannot tell which CSV holds the labels (found: {found}); pass --labels", src)
        labels = csvs[0]
    if images is None:
        with_images = [src] if _images_in(src) else [d for d in folders if _images_in(d)]
        if len(with_images) != 1:
            found = ", ".join(str(p) for p in with_images) or "none"
            raise InputError(f"cannot tell which folder holds the images (found: {found}); pass --images", src)
        images = with_images[0]
    return labels, require_dir(images, "image folder")


def _column(table: CsvTable, name: str, option: str) -> str:
    wanted = name.strip()
    for c in table.header:
        if c == wanted or c.lower() == wanted.lower():
            return c
    raise InputError(f"{option} {name!r} is not a column; header is {table.header}", table.path)


def _is_binary(value: str) -> bool:
    return value.strip() in ("0", "1", "0.0", "1.0")


def subtype_columns(table: CsvTable) -> dict[str, str]:
    """{subtype: column} for the header's columns named like `SUBTYPES` (case and spaces ignored)."""
    return {c.strip().lower(): c for c in table.header if c.strip().lower() in SUBTYPES}


def find_patient_column(table: CsvTable) -> str | None:
    """The first column named like `PATIENT_COLUMNS` (case and spaces ignored), or None."""
    return next((c for c in table.header if c.strip().lower() in PATIENT_COLUMNS), None)


def pick_label_column(table: CsvTable, exclude: list[str]) -> str:
    """The only column (besides `exclude`) whose values are all 0/1, subtype columns counted only when
    no other column is; InputError listing candidates."""
    candidates = [c for c in table.header if c not in exclude and table.rows
                  and all(_is_binary(rec[c]) for _, rec in table.rows)]
    subtypes = set(subtype_columns(table).values())
    candidates = [c for c in candidates if c not in subtypes] or candidates
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise InputError(f"no 0/1 label column besides {exclude}; header is {table.header}; "
                         f"pass --label-column", table.path)
    raise InputError(f"several 0/1 columns could be the label: {', '.join(candidates)}; "
                     f"pass --label-column", table.path)


def _readable(path: Path) -> str | None:
    """None when the image header opens, else the reason (no pixels are decoded)."""
    try:
        if path.suffix.lower() == ".dcm":
            pydicom.dcmread(str(path), stop_before_pixels=True)
        else:
            with Image.open(path) as im:
                im.size  # noqa: B018 - touching the header is the check
    except (UnidentifiedImageError, *READ_ERRORS) as e:
        return f"{path}: {e.__class__.__name__}: {e}"
    return None


def prepare_folder(src: str | Path, out: str | Path, *, labels: str | Path | None = None,
                   images: str | Path | None = None, label_column: str | None = None,
                   id_column: str | None = None, patient_column: str | None = None) -> Path:
    """Write a manifest with one row per labelled image; return its path."""
    src, out = require_dir(src), check_out(out)
    labels_path, image_dir = find_layout(src, Path(labels) if labels else None,
                                         Path(images) if images else None, (out, slices_path(out)))
    table = read_csv(labels_path, "labels CSV")
    id_col = _column(table, id_column, "--id-column") if id_column else table.header[0]
    patient_col = _column(table, patient_column, "--patient-column") if patient_column else find_patient_column(table)
    label_col = (_column(table, label_column, "--label-column") if label_column
                 else pick_label_column(table, [id_col] + ([patient_col] if patient_col else [])))
    subtype_cols = {k: c for k, c in subtype_columns(table).items() if c not in (id_col, label_col, patient_col)}

    files: dict[str, Path] = {}
    for p in _images_in(image_dir):
        key = id_key(p.stem)
        if key in files:
            raise InputError(f"{files[key].name} and {p.name} both match id {key!r}", image_dir)
        files[key] = p
    summary = Summary("folder")
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    problems: list[str] = []
    for i, rec in table.rows:
        raw_id = rec[id_col]
        if not raw_id:
            raise InputError(f"row {i}: empty {id_col}", labels_path)
        key = id_key(raw_id)
        if key in seen:
            raise InputError(f"row {i}: {id_col} {raw_id!r} repeats row {seen[key]}", labels_path)
        seen[key] = i
        label = parse_binary(rec[label_col], labels_path, i, label_col)
        subtypes = {k: parse_binary(rec[c], labels_path, i, c) for k, c in subtype_cols.items() if rec[c].strip()}
        if key not in files:
            continue
        if (why := _readable(files[key])) is not None:
            problems.append(why)
            continue
        stem = files[key].stem
        rows.append(ManifestRow(scan_id=stem, patient_id=(rec[patient_col] if patient_col else "") or stem,
                                path=manifest_path(files[key], out), label=label, subtypes=subtypes))
    report_problems("unreadable", problems)
    no_image = [k for k in seen if k not in files]
    no_label = [p.name for k, p in files.items() if k not in seen]
    report_problems("unmatched", ([f"{len(no_image)} id(s) in {labels_path} have no image, e.g. "
                                   f"{no_image[0]!r}"] if no_image else [])
                    + ([f"{len(no_label)} image(s) in {image_dir} have no label, e.g. {no_label[0]}"]
                       if no_label else []))
    summary.skip("unreadable images", len(problems))
    summary.skip("labels without image", len(no_image))
    summary.skip("images without label", len(no_label))
    if not rows and not problems:
        raise InputError(f"no id in column {id_col!r} matches an image stem in {image_dir}", labels_path)
    manifest = write_outputs(out, rows, None, summary)
    if patient_col is None:
        warnings.warn(f"{labels_path}: no patient column (named {', '.join(PATIENT_COLUMNS)}, or given by "
                      f"--patient-column): each image is its own patient", InputWarning, stacklevel=2)
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ichdet prepare folder` (dest names are prepare_folder's keyword arguments)."""
    parser.add_argument("--labels", type=Path, default=None,
                        help="labels CSV (default: SRC/labels.csv or the only CSV under SRC)")
    parser.add_argument("--images", type=Path, default=None,
                        help="image folder (default: SRC or the only folder under SRC with images)")
    parser.add_argument("--label-column", dest="label_column", default=None,
                        help="0/1 label column (default: the only 0/1 column besides the id)")
    parser.add_argument("--id-column", dest="id_column", default=None,
                        help="id column matching file stems (default: the first column)")
    parser.add_argument("--patient-column", dest="patient_column", default=None,
                        help="patient id column grouping a patient's images (default: a column named patient, "
                             "patient_id, patientid, patient id, subject or subject_id, else each image is its "
                             "own patient, with a warning)")
