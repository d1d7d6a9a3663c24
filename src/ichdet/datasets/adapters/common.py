"""What every adapter shares: checked CSV reading, 0/1 parsing, manifest paths, output, summary."""
from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ichdet.datasets.manifest import ManifestRow, SliceLabel, write_manifest, write_slice_labels
from ichdet.errors import InputError

log = logging.getLogger("ichdet.datasets.adapters")
MAX_LISTED = 10  # how many individual problems a log names before summarising the rest


@dataclass
class CsvTable:
    """A CSV read as text: cleaned header names and rows as (row number, {column: value}).

    Row numbers count the header as row 1, so they match what a spreadsheet shows.
    """

    path: Path
    header: list[str]
    rows: list[tuple[int, dict[str, str]]]

    def require(self, *columns: str) -> None:
        missing = [c for c in columns if c not in self.header]
        if missing:
            raise InputError(f"lacks column(s) {', '.join(missing)}; header is {self.header}", self.path)


def read_csv(path: Path, what: str = "CSV") -> CsvTable:
    """Read a small-to-large CSV; header names lose stray spaces and a BOM."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found", path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {what} as UTF-8 text ({e.__class__.__name__})", path) from None
    reader = csv.reader(io.StringIO(text))
    raw = next(reader, None)
    if not raw or not any(c.strip() for c in raw):
        raise InputError(f"{what} is empty (no header row)", path)
    header = [c.strip().lstrip("\ufeff").strip() for c in raw]
    rows = []
    for i, values in enumerate(reader, start=2):
        if not values or not any(v.strip() for v in values):
            continue
        if len(values) > len(header):
            raise InputError(f"row {i}: {len(values)} fields but the header has {len(header)}", path)
        rows.append((i, dict(zip(header, [v.strip() for v in values] + [""] * (len(header) - len(values))))))
    return CsvTable(path, header, rows)


def parse_binary(value: str, path: Path, row: int, column: str) -> int:
    """Parse a 0/1 cell ("1", "0", "1.0"); the error names file, row, column and value."""
    v = value.strip()
    try:
        f = float(v)
    except ValueError:
        f = -1.0
    if f not in (0.0, 1.0):
        raise InputError(f"row {row}: {column} must be 0 or 1, got {value!r}", path)
    return int(f)


def parse_int(value: str, path: Path, row: int, column: str, minimum: int | None = None) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise InputError(f"row {row}: {column} must be an integer, got {value!r}", path) from None
    if minimum is not None and n < minimum:
        raise InputError(f"row {row}: {column} must be >= {minimum}, got {value!r}", path)
    return n


def require_dir(src: str | Path, what: str = "source folder") -> Path:
    src = Path(src)
    if not src.is_dir():
        raise InputError(f"{what} not found" if not src.exists() else f"{what} is not a folder", src)
    return src


def check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.is_dir():
        raise InputError("--out must name a CSV file, not a folder", out)
    return out


def manifest_path(target: str | Path, out: Path) -> str:
    """`target` relative to the manifest's folder when it lies under it, else absolute (POSIX '/')."""
    target = Path(os.path.abspath(target))
    base = Path(os.path.abspath(out)).parent
    try:
        return target.relative_to(base).as_posix() or "."
    except ValueError:
        return target.as_posix()


def slices_path(out: str | Path) -> Path:
    """The slice-label CSV beside the manifest: ``<out stem>_slices.csv``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_slices.csv")


def or_subtypes(items: list[dict[str, int]]) -> dict[str, int]:
    """Element-wise OR of subtype dicts (keys that any item has)."""
    out: dict[str, int] = {}
    for d in items:
        for k, v in d.items():
            out[k] = max(out.get(k, 0), v)
    return out


@dataclass
class Summary:
    """Counts reported in the adapter's one-line summary."""

    name: str
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] = self.skipped.get(reason, 0) + n

    def line(self, rows: list[ManifestRow], out: Path) -> str:
        pos = sum(r.label for r in rows)
        patients = len({r.patient_id for r in rows})
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (f"prepare {self.name}: {len(rows)} scans, {pos} positive, {patients} patients; "
                f"skipped: {skipped} -> {out}")


def report_problems(kind: str, problems: list[str]) -> None:
    """Log the first few problems one by one and the rest as a count."""
    for p in problems[:MAX_LISTED]:
        log.warning("%s: %s", kind, p)
    if len(problems) > MAX_LISTED:
        log.warning("%s: ... and %d more", kind, len(problems) - MAX_LISTED)


def write_outputs(out: Path, rows: list[ManifestRow], slice_rows: list[SliceLabel] | None,
                  summary: Summary) -> Path:
    """Write the slice labels (when any) and then the manifest, each atomically; log the summary."""
    if not rows:
        raise InputError(f"no scans to write; skipped: {summary.skipped or 'nothing found'}", out)
    rows = sorted(rows, key=lambda r: r.scan_id)
    if slice_rows:
        write_slice_labels(slices_path(out), sorted(slice_rows, key=lambda s: (s.scan_id, s.slice_index)))
    elif slices_path(out).is_file():  # a stale one from an earlier run would mislabel slices
        slices_path(out).unlink()
    write_manifest(out, rows)
    log.info(summary.line(rows, out))
    return out
