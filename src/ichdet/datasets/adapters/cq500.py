"""CQ500: `CQ500-CT-<n>/` folders (or `CQ500-CT-<n>.zip`) + `reads.csv` -> manifest.

Label = majority of the readers (R1..R3) on ICH; subtypes by majority per subtype (IPH, IVH, SDH,
EDH, SAH). One series per study is chosen by the header-only rule of
`ichdet.datasets.adapters.series_pick` (plain axial, non-bone, >= 10 slices, thickness closest
to 5 mm). `path` is the chosen series' folder (the study folder when its files mix series);
`series_uid` says which series to read. Zipped cases are read in place and only the chosen
series is extracted, to `<out dir>/cq500_series/<case>/<SeriesInstanceUID>/`.
"""
from __future__ import annotations

import argparse
import re
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ichdet.datasets.adapters.common import (
    Summary, check_out, manifest_path, parse_binary, read_csv, report_problems, require_dir, write_outputs,
)
from ichdet.datasets.adapters.dicom_headers import DicomHeader, read_header, read_header_bytes
from ichdet.datasets.adapters.series_pick import PREFER_THICKNESS_MM, MIN_SLICES, SeriesInfo, is_dicom_name, pick_series
from ichdet.datasets.manifest import ManifestRow
from ichdet.errors import InputError
from ichdet.fileio import atomic_path

READER_SUBTYPES = {"IPH": "intraparenchymal", "IVH": "intraventricular", "SDH": "subdural",
                   "EDH": "epidural", "SAH": "subarachnoid"}
_CASE = re.compile(r"cq500\W*ct\W*(\d+)", re.I)
_READ_COLUMN = re.compile(r"^R(\d+)\s*:\s*([A-Za-z]+)$")
ZIP_HEAD_BYTES = 1 << 16  # a DICOM header nearly always fits; the whole member is read otherwise
EXTRACT_DIR = "cq500_series"


def case_key(name: str) -> str | None:
    """'CQ500-CT-1', 'CQ500CT1 CQ500CT1', 'cq500-ct-1.zip' -> 'CQ500-CT-1'; None if no match."""
    m = _CASE.search(name)
    return f"CQ500-CT-{int(m.group(1))}" if m else None


@dataclass
class Reads:
    """The majority-vote labels of one case."""

    label: int
    subtypes: dict[str, int] = field(default_factory=dict)
    category: str = ""


def read_reads(path: str | Path) -> dict[str, Reads]:
    """Parse reads.csv -> {case key: Reads}; majority = more than half of the readers."""
    table = read_csv(Path(path), "reads.csv")
    table.require("name")
    columns: dict[tuple[int, str], str] = {}
    for col in table.header:
        m = _READ_COLUMN.match(col)
        if m:
            columns[(int(m.group(1)), m.group(2).upper())] = col
    readers = sorted({r for r, what in columns if what == "ICH"})
    if not readers:
        raise InputError(f"no R<n>:ICH reader columns; header is {table.header}", table.path)
    codes = [c for c in READER_SUBTYPES if all((r, c) in columns for r in readers)]
    out: dict[str, Reads] = {}
    for i, rec in table.rows:
        name = rec["name"]
        if not name:
            raise InputError(f"row {i}: empty name", table.path)
        key = case_key(name) or name
        if key in out:
            raise InputError(f"row {i}: duplicate case {name!r}", table.path)

        def majority(code: str) -> int:
            votes = [parse_binary(rec[columns[(r, code)]], table.path, i, columns[(r, code)]) for r in readers]
            return int(2 * sum(votes) > len(votes))

        out[key] = Reads(majority("ICH"), {READER_SUBTYPES[c]: majority(c) for c in codes},
                         rec.get("Category", ""))
    if not out:
        raise InputError("reads.csv has a header but no rows", table.path)
    return out


def find_cases(src: Path) -> dict[str, Path]:
    """Case folders/zips under `src` by case key; `src` itself when it holds no case entries."""
    cases: dict[str, Path] = {}
    for p in sorted(src.iterdir()):
        key = case_key(p.name)
        if key is None or not (p.is_dir() or p.suffix.lower() == ".zip"):
            continue
        prev = cases.get(key)
        if prev is None:
            cases[key] = p
        elif prev.is_dir() != p.is_dir():
            cases[key] = prev if prev.is_dir() else p  # an extracted folder wins over its zip
        else:
            raise InputError(f"two entries for case {key}: {prev.name} and {p.name}", src)
    return cases or {case_key(src.name) or "": src}


def scan_case(path: Path) -> tuple[list[DicomHeader], list[str]]:
    """Headers of every DICOM file in a case folder (recursive) or zip: (headers, problems)."""
    results: list[DicomHeader | str] = []
    if path.is_dir():
        results = [read_header(p) for p in sorted(path.rglob("*")) if p.is_file() and is_dicom_name(p)]
    else:
        try:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if info.is_dir() or not is_dicom_name(Path(info.filename)):
                        continue
                    source = f"{path}::{info.filename}"
                    with zf.open(info) as f:
                        r = read_header_bytes(f.read(ZIP_HEAD_BYTES), source)
                    if isinstance(r, str) and info.file_size > ZIP_HEAD_BYTES:
                        r = read_header_bytes(zf.read(info), source)
                    results.append(r)
        except (zipfile.BadZipFile, OSError) as e:
            return [], [f"{path}: cannot read zip ({e})"]
    return ([r for r in results if isinstance(r, DicomHeader)], [r for r in results if isinstance(r, str)])


def _case_ids(key: str, headers: list[DicomHeader]) -> list[str]:
    """Names under which a case may appear in reads.csv: its folder's key, then its PatientID."""
    ids = [key] + [case_key(h.patient_id) or h.patient_id for h in headers[:1]]
    return list(dict.fromkeys(k for k in ids if k))


def _extract(folder: Path, chosen: dict[str, SeriesInfo]) -> dict[str, Path]:
    """Extract each zipped case's chosen series into `folder` (atomically); {case: series folder}."""
    targets: dict[str, Path] = {}
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for key, s in chosen.items():
            d = Path(key) / re.sub(r"[^A-Za-z0-9._-]", "_", s.uid)
            (tmp / d).mkdir(parents=True)
            for h in s.headers:
                zip_path, member = h.source.split("::", 1)
                with zipfile.ZipFile(zip_path) as zf:
                    (tmp / d / Path(member).name).write_bytes(zf.read(member))
            targets[key] = folder / d
    return targets


def prepare_cq500(src: str | Path, out: str | Path, *, reads: str | Path | None = None,
                  prefer_thickness: float = PREFER_THICKNESS_MM, min_slices: int = MIN_SLICES,
                  extract_dir: str | Path | None = None, workers: int = 1) -> Path:
    """Write the CQ500 manifest (one row per case, extra column series_uid); return its path."""
    src, out = require_dir(src), check_out(out)
    labels = read_reads(Path(reads) if reads else src / "reads.csv")
    cases = find_cases(src)
    summary = Summary("cq500")
    paths = list(cases.values())
    if workers > 1 and len(paths) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            scanned = list(pool.map(scan_case, paths))
    else:
        scanned = [scan_case(p) for p in paths]
    rows: list[ManifestRow] = []
    found: set[str] = set()
    zipped: dict[str, SeriesInfo] = {}
    for (key, case_path), (headers, problems) in zip(cases.items(), scanned):
        report_problems("unreadable", problems)
        summary.skip("unreadable files", len(problems))
        ids = _case_ids(key, headers)
        key = next((k for k in ids if k in labels), "")
        if not key or key in found:
            why = f"a second folder for {key}" if key else f"no row in reads.csv for {' or '.join(ids) or 'it'}"
            report_problems("no reads", [f"{case_path}: {why}"])
            summary.skip("cases without reads" if not key else "duplicate cases", 1)
            continue
        found.add(key)
        best, reasons = pick_series(headers, prefer_thickness, min_slices)
        if best is None:
            why = "; ".join(f"{u}: {r}" for u, r in reasons.items()) or "no DICOM files"
            report_problems("no series", [f"{case_path}: no plain axial series ({why})"])
            summary.skip("cases without a usable series", 1)
            continue
        if "::" in best.headers[0].source:
            zipped[key] = best
        r = labels[key]
        extra = {"series_uid": best.uid, "series_description": best.description,
                 "slice_thickness": "" if best.thickness is None else f"{best.thickness:g}",
                 "n_slices": str(best.n_slices)}
        if r.category:
            extra["category"] = r.category
        rows.append(ManifestRow(scan_id=key, patient_id=key, path=best.folder, label=r.label,
                                subtypes=dict(r.subtypes), extra=extra))
    summary.skip("reads rows without images", len(set(labels) - found))
    if not rows:
        raise InputError(f"no case in {src} matched reads.csv with a usable series; "
                         f"skipped: {summary.skipped}")
    extract_to = Path(extract_dir) if extract_dir else out.parent / EXTRACT_DIR
    extracted = _extract(extract_to, zipped) if zipped else {}
    for row in rows:
        row.path = manifest_path(extracted.get(row.scan_id, row.path), out)
    return write_outputs(out, rows, None, summary)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ichdet prepare cq500` (dest names are prepare_cq500's keyword arguments)."""
    parser.add_argument("--reads", type=Path, default=None, help="reads.csv (default: SRC/reads.csv)")
    parser.add_argument("--prefer-thickness", dest="prefer_thickness", type=float,
                        default=PREFER_THICKNESS_MM, help="preferred slice thickness in mm (default: 5)")
    parser.add_argument("--min-slices", dest="min_slices", type=int, default=MIN_SLICES,
                        help="fewest slices a candidate series may have (default: 10)")
    parser.add_argument("--extract-dir", dest="extract_dir", type=Path, default=None,
                        help="where zipped cases' chosen series go (default: <out dir>/cq500_series)")
    parser.add_argument("--workers", type=int, default=1, help="processes reading cases (default: 1)")
