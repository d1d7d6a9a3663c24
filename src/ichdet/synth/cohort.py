"""Write a synthetic cohort to disk: DICOM series and/or NIfTI, label masks, manifest, slice labels.

Layout under `out_dir`::

    scans/<scan_id>/IM00001.dcm ...   DICOM series (fmt "dicom" or "both")
    nifti/<scan_id>.nii.gz            HU volume (fmt "nifti" or "both")
    masks/<scan_id>.nii.gz            uint8 labels: 0 none, i + 1 = SUBTYPES[i]
    records/<scan_id>.json            what was generated (written last: marks the scan complete)
    manifest.csv, slice_labels.csv

Scan i is generated from ``np.random.default_rng([seed, i])`` alone, so it does not depend on
`n_scans`; re-running with the same arguments skips complete scans (resume).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from pydicom.uid import generate_uid

from ichdet.datasets import Progress
from ichdet.datasets.manifest import SUBTYPES, ManifestRow, SliceLabel, write_manifest, write_slice_labels
from ichdet.errors import InputError
from ichdet.fileio import write_text_atomic
from ichdet.io import write_dicom_series, write_nifti
from ichdet.synth.scan import check_difficulty, default_n_slices, synthesize

FORMATS = ("dicom", "nifti", "both")
FOLLOW_UP_P = 0.3  # chance that scans 2j and 2j+1 are one patient (a follow-up scan)
GOLDEN = 0.6180339887498949  # low-discrepancy sequence: any prefix has ~positive_fraction positives
RECORD_VERSION = 1


def scan_id_for(seed: int, i: int) -> str:
    return f"synth{seed}_{i:05d}"


def patient_for(seed: int, i: int, patients: int | None) -> tuple[str, list[int]]:
    """(patient_id, anatomy seed) of scan i: with `patients` None some consecutive pairs share a
    patient; with an int, scan i belongs to patient ``i % patients``."""
    if patients is None:
        j = i // 2
        p = 2 * j if np.random.default_rng([seed, j, 1]).uniform() < FOLLOW_UP_P else i
    else:
        p = i % patients
    return f"synthp{seed}_{p:05d}", [seed, p, 2]


def is_positive(seed: int, i: int, fraction: float) -> bool:
    offset = np.random.default_rng([seed, 3]).uniform()
    return bool(((i + 1) * GOLDEN + offset) % 1.0 < fraction)


def _validate(n_scans: int, seed: int, positive_fraction: float, fmt: str, slice_thickness: float,
              difficulty: float, size: int, n_slices: int | None, patients: int | None) -> None:
    if int(n_scans) < 1:
        raise InputError(f"n_scans must be >= 1, got {n_scans}")
    if int(seed) < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    if not 0.0 <= float(positive_fraction) <= 1.0:
        raise InputError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    if fmt not in FORMATS:
        raise InputError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not 0.5 <= float(slice_thickness) <= 20.0:
        raise InputError(f"slice_thickness must be in [0.5, 20] mm, got {slice_thickness}")
    check_difficulty(difficulty)
    if not 32 <= int(size) <= 1024:
        raise InputError(f"size must be in [32, 1024] pixels, got {size}")
    if n_slices is not None and not 1 <= int(n_slices) <= 1000:
        raise InputError(f"n_slices must be in [1, 1000], got {n_slices}")
    if patients is not None and int(patients) < 1:
        raise InputError(f"patients must be >= 1, got {patients}")


def _paths(out: Path, sid: str, fmt: str) -> dict[str, Path]:
    p = {"mask": out / "masks" / f"{sid}.nii.gz", "record": out / "records" / f"{sid}.json"}
    if fmt in ("dicom", "both"):
        p["dicom"] = out / "scans" / sid
    if fmt in ("nifti", "both"):
        p["nifti"] = out / "nifti" / f"{sid}.nii.gz"
    return p


def _load_complete(paths: dict[str, Path], params: dict[str, Any]) -> dict[str, Any] | None:
    """The scan's record if it and all its files exist and it was made with `params`."""
    if not paths["record"].is_file() or not all(p.exists() for k, p in paths.items() if k != "record"):
        return None
    try:
        rec = json.loads(paths["record"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if rec.get("params") == params else None


def _write_scan(out: Path, paths: dict[str, Path], sid: str, params: dict[str, Any], patient_id: str,
                anatomy_seed: list[int]) -> dict[str, Any]:
    """Generate scan `params["index"]` into a temp folder, then move its files into place."""
    seed, i = params["seed"], params["index"]
    ent = ["ichdet-synth", str(seed), str(i)]
    study_uid, series_uid = generate_uid(entropy_srcs=ent + ["study"]), generate_uid(entropy_srcs=ent + ["series"])
    scan = synthesize(np.random.default_rng([seed, i]), size=params["size"], n_slices=params["n_slices"],
                      slice_thickness=params["slice_thickness"], difficulty=params["difficulty"],
                      positive=params["positive"], anatomy_seed=anatomy_seed, patient_id=patient_id,
                      study_uid=study_uid, series_uid=series_uid)
    vol = scan.volume
    record = {"version": RECORD_VERSION, "scan_id": sid, "patient_id": patient_id, "params": params,
              "study_uid": study_uid, "series_uid": series_uid, "n_slices": vol.shape[0], **scan.meta}
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sid}.", dir=out))
    try:
        staged = {"mask": tmp / "mask.nii.gz", "record": tmp / "record.json"}
        if "dicom" in paths:
            staged["dicom"] = tmp / "dicom"
            write_dicom_series(vol, staged["dicom"], patient_name=patient_id,
                               series_description="ichdet synthetic head CT")
        if "nifti" in paths:
            staged["nifti"] = write_nifti(vol, tmp / "image.nii.gz")
        img = nib.Nifti1Image(np.ascontiguousarray(scan.mask.transpose(2, 1, 0)), vol.affine_ras())
        img.set_sform(vol.affine_ras(), code=1)
        img.set_qform(vol.affine_ras(), code=1)
        nib.save(img, str(staged["mask"]))
        staged["record"].write_text(json.dumps(record), encoding="utf-8")
        for key in ("dicom", "nifti", "mask", "record"):  # the record last: it marks the scan complete
            if key in staged:
                dst = paths[key]
                dst.parent.mkdir(parents=True, exist_ok=True)
                if dst.is_dir():
                    shutil.rmtree(dst)
                os.replace(staged[key], dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def _write_job(args: tuple) -> dict[str, Any]:
    return _write_scan(*args)


def make_cohort(out_dir: str | Path, n_scans: int, seed: int = 0, positive_fraction: float = 0.5,
                fmt: str = "dicom", slice_thickness: float = 5.0, difficulty: float = 0.5, size: int = 512,
                n_slices: int | None = None, patients: int | None = None,
                progress: Progress | None = None, workers: int = 1) -> Path:
    """Generate (or resume) `n_scans` synthetic head CTs under `out_dir`; returns the manifest path.

    `fmt` "dicom", "nifti" or "both" (then `path` is the DICOM folder and `nifti_path` the NIfTI).
    `patients` None: ~30% of consecutive scan pairs are one patient; an int: scan i belongs to
    patient ``i % patients``. Scans of one patient share their head anatomy. `progress(done, total)`
    is called after each scan. `workers` > 1 writes that many scans at once (spawned processes,
    `ichdet.workers`); every scan is the same whatever the number.
    """
    from ichdet.workers import run_jobs

    _validate(n_scans, seed, positive_fraction, fmt, slice_thickness, difficulty, size, n_slices, patients)
    out = Path(out_dir)
    nz = default_n_slices(float(slice_thickness)) if n_slices is None else int(n_slices)
    scans, records, todo = [], {}, {}
    for i in range(int(n_scans)):
        sid = scan_id_for(int(seed), i)
        patient_id, anatomy_seed = patient_for(int(seed), i, patients)
        params = {"seed": int(seed), "index": i, "size": int(size), "n_slices": nz,
                  "slice_thickness": float(slice_thickness), "difficulty": float(difficulty),
                  "positive": is_positive(int(seed), i, float(positive_fraction)), "fmt": fmt,
                  "patient_id": patient_id}
        paths = _paths(out, sid, fmt)
        scans.append((sid, patient_id, paths))
        records[sid] = _load_complete(paths, params)
        if records[sid] is None:
            todo[sid] = (out, paths, sid, params, patient_id, anatomy_seed)

    def done(sid: str, record: dict[str, Any]) -> None:
        records[sid] = record
        if progress is not None:
            progress(sum(r is not None for r in records.values()), int(n_scans))

    if progress is not None and len(todo) < n_scans:
        progress(int(n_scans) - len(todo), int(n_scans))
    run_jobs(_write_job, todo, workers=min(workers, len(todo)), threads=1, finished=done)
    rows: list[ManifestRow] = []
    slices: list[SliceLabel] = []
    for sid, patient_id, paths in scans:
        rec = records[sid]
        rel = {k: p.relative_to(out).as_posix() for k, p in paths.items()}
        extra = {"n_slices": str(rec["n_slices"]), "difficulty": f"{float(difficulty):g}", "mask_path": rel["mask"],
                 "series_uid": rec["series_uid"]}
        if fmt == "both":
            extra["nifti_path"] = rel["nifti"]
        rows.append(ManifestRow(sid, patient_id, rel["dicom" if fmt != "nifti" else "nifti"], int(rec["label"]),
                                subtypes={s: int(rec["subtypes"][s]) for s in SUBTYPES}, extra=extra))
        for k, flags in enumerate(rec["slice_labels"]):
            slices.append(SliceLabel(sid, k, int(any(flags)), {s: int(f) for s, f in zip(SUBTYPES, flags)}))
    write_slice_labels(out / "slice_labels.csv", slices)
    manifest = write_manifest(out / "manifest.csv", rows)
    write_text_atomic(out / "cohort.json", json.dumps({
        "generator": "ichdet.synth", "seed": int(seed), "n_scans": int(n_scans), "positive_fraction": float(positive_fraction),
        "fmt": fmt, "slice_thickness": float(slice_thickness), "difficulty": float(difficulty), "size": int(size),
        "n_slices": nz, "patients": patients}, indent=2))
    return manifest
