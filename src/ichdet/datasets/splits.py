"""Train/validation/test splits by patient, never by scan or slice (or the metrics leak).

`split_by_patient` draws a split stratified by patient label (a patient is positive when any of
their scans is); it depends only on the set of rows and the seed, not their order. A manifest
with a ``split`` column is honoured instead, after checking its values and that no patient has
scans in two splits. Splits are stored as a CSV ``scan_id,split``.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ichdet.datasets.manifest import ManifestRow
from ichdet.errors import InputError
from ichdet.fileio import write_text_atomic

SPLITS = ("train", "val", "test")
SPLIT_COLUMN = "split"


def _check_value(value: str, where: str) -> str:
    v = value.strip().lower()
    if v not in SPLITS:
        raise InputError(f"{where}: split must be one of train, val, test, got {value!r}")
    return v


def splits_from_column(rows: Sequence[ManifestRow]) -> dict[str, str]:
    """The manifest's own ``split`` column -> {scan_id: split}, validated: values are
    train/val/test (any case) and every patient's scans share one split."""
    mapping: dict[str, str] = {}
    by_patient: dict[str, dict[str, str]] = {}
    for r in rows:
        split = _check_value(r.extra.get(SPLIT_COLUMN, ""), f"scan {r.scan_id!r}")
        mapping[r.scan_id] = split
        by_patient.setdefault(r.patient_id, {}).setdefault(split, r.scan_id)
    for pid in sorted(by_patient):
        seen = by_patient[pid]
        if len(seen) > 1:
            detail = ", ".join(f"{s} ({seen[s]})" for s in SPLITS if s in seen)
            raise InputError(f"patient {pid!r} has scans in more than one split: {detail}; "
                             "a patient's scans must all be in one split")
    return mapping


def _patient_labels(rows: Sequence[ManifestRow]) -> dict[str, int]:
    labels: dict[str, int] = {}
    for r in rows:
        labels[r.patient_id] = max(labels.get(r.patient_id, 0), int(r.label))
    return labels


def _counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """How many of `n` patients of one class go to val and test (>= 1 each when its fraction
    is > 0) and train (the rest, >= 1); the caller has checked n is large enough."""
    out = {s: (max(1, int(round(n * f))) if f > 0 else 0) for s, f in fractions.items()}
    while n - sum(out.values()) < 1:  # train keeps at least one: shrink the larger held-out part
        big = max(out, key=lambda s: (out[s], s))
        out[big] -= 1
    out["train"] = n - sum(v for s, v in out.items() if s != "train")
    return out


def split_by_patient(rows: Sequence[ManifestRow], val_fraction: float = 0.15, test_fraction: float = 0.15,
                     seed: int = 0, use_column: bool = True) -> dict[str, str]:
    """{scan_id: "train" | "val" | "test"}, drawn by patient and stratified by patient label.

    A fraction of 0 leaves that split empty. Every non-empty split gets at least one positive
    and one negative patient, else InputError says how many are needed. With `use_column` and a
    ``split`` column in the manifest (``ManifestRow.extra["split"]``), that column is used.
    """
    rows = list(rows)
    if not rows:
        raise InputError("cannot split an empty manifest")
    if use_column and any(SPLIT_COLUMN in r.extra for r in rows):
        return splits_from_column(rows)
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(f) < 1.0:
            raise InputError(f"{name} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise InputError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    fractions = {"val": float(val_fraction), "test": float(test_fraction)}
    wanted = ["train"] + [s for s in ("val", "test") if fractions[s] > 0]
    labels = _patient_labels(rows)
    rng = np.random.default_rng(int(seed))
    patient_split: dict[str, str] = {}
    for cls, name in ((1, "positive"), (0, "negative")):
        pids = sorted(p for p, y in labels.items() if y == cls)
        if len(pids) < len(wanted):
            raise InputError(
                f"cannot split by patient: {len(pids)} {name} patient(s), but each of {', '.join(wanted)} needs "
                f"at least one; need {len(wanted)} {name} patients (or set val/test fractions to 0, or give a "
                f"'split' column in the manifest)")
        order = [pids[i] for i in rng.permutation(len(pids))]
        n = _counts(len(pids), fractions)
        start = 0
        for split in ("test", "val", "train"):
            for p in order[start:start + n[split]]:
                patient_split[p] = split
            start += n[split]
    return {r.scan_id: patient_split[r.patient_id] for r in rows}


def split_counts(rows: Sequence[ManifestRow], mapping: Mapping[str, str]) -> dict[str, dict[str, int]]:
    """{split: {"scans", "positive_scans", "patients", "positive_patients"}} for a summary table."""
    out = {s: {"scans": 0, "positive_scans": 0, "patients": 0, "positive_patients": 0} for s in SPLITS}
    patients: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for r in rows:
        s = mapping.get(r.scan_id)
        if s is None:
            continue
        out[s]["scans"] += 1
        out[s]["positive_scans"] += int(r.label)
        patients[s][r.patient_id] = max(patients[s].get(r.patient_id, 0), int(r.label))
    for s in SPLITS:
        out[s]["patients"] = len(patients[s])
        out[s]["positive_patients"] = sum(patients[s].values())
    return out


def write_splits(path: str | Path, mapping: Mapping[str, str]) -> Path:
    """Write {scan_id: split} as CSV ``scan_id,split`` (sorted by scan_id), atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["scan_id", SPLIT_COLUMN])
    for sid in sorted(mapping):
        w.writerow([sid, _check_value(mapping[sid], f"scan {sid!r}")])
    return write_text_atomic(path, buf.getvalue())


def read_splits(path: str | Path) -> dict[str, str]:
    """Read a ``scan_id,split`` CSV written by `write_splits` (or by hand)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("split CSV not found", path)
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig")))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "scan_id" not in header or SPLIT_COLUMN not in header:
        raise InputError(f"split CSV needs columns scan_id,split; header is {header}", path)
    reader.fieldnames = header
    out: dict[str, str] = {}
    for i, rec in enumerate(reader, start=2):
        sid = (rec["scan_id"] or "").strip()
        if not sid:
            raise InputError(f"row {i}: empty scan_id", path)
        if sid in out:
            raise InputError(f"row {i}: duplicate scan_id {sid!r}", path)
        out[sid] = _check_value(rec[SPLIT_COLUMN] or "", f"{path}: row {i}")
    return out


__all__ = ["SPLITS", "SPLIT_COLUMN", "read_splits", "split_by_patient", "split_counts", "splits_from_column",
           "write_splits"]
