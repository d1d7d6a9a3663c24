"""The manifest: one CSV row per scan (or image), the contract between adapters and trainers.

Columns: ``scan_id,patient_id,path,label`` plus optional subtype columns (``SUBTYPES``) and any
extra columns an adapter wants to keep (e.g. ``series_uid``). ``path`` is absolute or relative to
the manifest's folder. A slice-label CSV sits beside it: ``scan_id,slice_index,label[,subtypes]``,
with ``slice_index`` counted from the most inferior slice.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from ichdet.errors import InputError
from ichdet.fileio import write_text_atomic

REQUIRED_COLUMNS = ("scan_id", "patient_id", "path", "label")
SUBTYPES = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
LABEL_MODES = ("binary", "subtypes")  # what a model is trained to give: bleed / no bleed, or SUBTYPES + "any"
SLICE_COLUMNS = ("scan_id", "slice_index", "label")


@dataclass
class ManifestRow:
    """One scan or image. `subtypes` maps subtype name -> 0/1 (empty when unknown)."""

    scan_id: str
    patient_id: str
    path: str
    label: int
    subtypes: dict[str, int] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)

    def resolved_path(self, root: str | Path) -> Path:
        p = Path(self.path)
        return p if p.is_absolute() else Path(root) / p


def _parse_label(value: str, where: str, column: str) -> int:
    v = (value or "").strip()
    try:
        f = float(v)
    except ValueError:
        raise InputError(f"{where}: column '{column}' must be 0 or 1, got {value!r}") from None
    if f not in (0.0, 1.0):
        raise InputError(f"{where}: column '{column}' must be 0 or 1, got {value!r}")
    return int(f)


def _clean_header(names: list[str] | None, path: Path) -> list[str]:
    if not names:
        raise InputError("CSV is empty (no header row)", path)
    return [n.strip().lstrip("\ufeff").strip() for n in names]


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read and validate a manifest CSV; errors name the file, the row and the column."""
    path = Path(path)
    if not path.is_file():
        raise InputError("manifest not found", path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read manifest as UTF-8 text ({e.__class__.__name__})", path) from None
    reader = csv.DictReader(io.StringIO(text))
    header = _clean_header(reader.fieldnames, path)
    reader.fieldnames = header
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InputError(f"manifest lacks column(s) {', '.join(missing)}; header is {header}", path)
    rows: list[ManifestRow] = []
    seen: set[str] = set()
    for i, rec in enumerate(reader, start=2):
        where = f"{path}: row {i}"
        if None in rec:
            raise InputError(f"{where}: more fields than header columns")
        scan_id = (rec["scan_id"] or "").strip()
        if not scan_id:
            raise InputError(f"{where}: empty scan_id")
        if scan_id in seen:
            raise InputError(f"{where}: duplicate scan_id {scan_id!r}")
        seen.add(scan_id)
        if not (rec["path"] or "").strip():
            raise InputError(f"{where}: empty path")
        subtypes = {s: _parse_label(rec[s], where, s) for s in SUBTYPES if s in header and (rec[s] or "").strip() != ""}
        extra = {k: (v or "") for k, v in rec.items() if k not in REQUIRED_COLUMNS and k not in SUBTYPES}
        rows.append(ManifestRow(scan_id=scan_id, patient_id=(rec["patient_id"] or scan_id).strip(),
                                path=rec["path"].strip(), label=_parse_label(rec["label"], where, "label"),
                                subtypes=subtypes, extra=extra))
    if not rows:
        raise InputError("manifest has a header but no rows", path)
    return rows


def write_manifest(path: str | Path, rows: list[ManifestRow]) -> Path:
    """Write rows atomically; subtype columns appear when any row has them, extras after."""
    has_subtypes = any(r.subtypes for r in rows)
    extras: list[str] = []
    for r in rows:
        extras += [k for k in r.extra if k not in extras]
    columns = list(REQUIRED_COLUMNS) + (list(SUBTYPES) if has_subtypes else []) + extras
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        rec = {"scan_id": r.scan_id, "patient_id": r.patient_id, "path": r.path, "label": r.label,
               **{s: r.subtypes.get(s, "") for s in SUBTYPES}, **r.extra}
        w.writerow([rec.get(c, "") for c in columns])
    return write_text_atomic(path, buf.getvalue())


@dataclass
class SliceLabel:
    scan_id: str
    slice_index: int  # 0 = most inferior slice
    label: int
    subtypes: dict[str, int] = field(default_factory=dict)


def write_slice_labels(path: str | Path, rows: list[SliceLabel]) -> Path:
    has_subtypes = any(r.subtypes for r in rows)
    columns = list(SLICE_COLUMNS) + (list(SUBTYPES) if has_subtypes else [])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([r.scan_id, r.slice_index, r.label] + ([r.subtypes.get(s, "") for s in SUBTYPES] if has_subtypes else []))
    return write_text_atomic(path, buf.getvalue())


def read_slice_labels(path: str | Path) -> dict[str, list[SliceLabel]]:
    """Read a slice-label CSV into {scan_id: [SliceLabel sorted by slice_index]}."""
    path = Path(path)
    if not path.is_file():
        raise InputError("slice-label CSV not found", path)
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig")))
    header = _clean_header(reader.fieldnames, path)
    reader.fieldnames = header
    missing = [c for c in SLICE_COLUMNS if c not in header]
    if missing:
        raise InputError(f"slice-label CSV lacks column(s) {', '.join(missing)}; header is {header}", path)
    out: dict[str, list[SliceLabel]] = {}
    for i, rec in enumerate(reader, start=2):
        where = f"{path}: row {i}"
        try:
            idx = int((rec["slice_index"] or "").strip())
        except ValueError:
            raise InputError(f"{where}: slice_index must be an integer, got {rec['slice_index']!r}") from None
        if idx < 0:
            raise InputError(f"{where}: slice_index must be >= 0, got {idx}")
        subtypes = {s: _parse_label(rec[s], where, s) for s in SUBTYPES if s in header and (rec[s] or "").strip() != ""}
        out.setdefault(rec["scan_id"].strip(), []).append(
            SliceLabel(rec["scan_id"].strip(), idx, _parse_label(rec["label"], where, "label"), subtypes))
    for v in out.values():
        v.sort(key=lambda s: s.slice_index)
    return out
