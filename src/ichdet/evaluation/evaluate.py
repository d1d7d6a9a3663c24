"""`ichdet evaluate`: a bundle on held-out cases -> metrics.json, predictions.csv, ROC and confusion figures.

The operating point is the bundle's (chosen on validation data when it was trained) and is
applied unchanged. Scans the bundle was trained or validated on (its splits.csv) are never
scored: with ``split="auto"`` they are left out and counted, with ``split="test"`` only the
bundle's test scans (or the manifest's ``split == test`` rows) are scored. Scans are prepared as
`predict` prepares them (`Bundle.input_prep`): a series thinner than the training scans is first
merged into slabs of their slice thickness.

A bundle with subtypes (a multi-label network, ``bundle.has_subtypes``) also gets, from the same
pass over the scans, each label's probability in predictions.csv (``p_LABEL``, "any" last, next to
the manifest's targets ``y_SUBTYPE``, -1 unknown) and in metrics.json per model ``subtypes``
({label: AUC with its 95% DeLong CI, n_pos, n_neg}; unknown targets left out) and
``rsna_log_loss`` (the RSNA 2019 weighted log loss, "any" weighted twice).

A segmentation bundle scores each scan as `predict` does, on the scan's own voxels, and compares
its mask with the manifest's (`mask_path`): metrics.json gains "segmentation" (Dice per label,
volume errors in mL against the truth and against ABC/2; `ichdet.evaluation.segmentation`), and
the folder segmentation.md with bland_altman.png.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import ichdet
from ichdet.engine.bundle import Bundle, load_bundle
from ichdet.datasets import Progress
from ichdet.datasets.cache import PreparedCache
from ichdet.datasets.prepared import PreparedCohort
from ichdet.datasets.splits import SPLIT_COLUMN
from ichdet.errors import InputError
from ichdet.fileio import write_json, write_text_atomic
from ichdet.metrics import SUBTYPE_LABELS, reliability_curve, subtype_metrics

SPLIT_CHOICES = ("auto", "test", "all")


@dataclass
class Scores:
    """One model's scores on a case list: `scores[i]` for `scan_ids[i]`, whose bleed label is `y[i]`."""

    name: str
    scan_ids: list[str]
    y: np.ndarray  # int64 (N,) 1 = bleed
    scores: np.ndarray  # float64 (N,), higher = bleed
    threshold: float
    seconds_per_scan: float
    subtypes: np.ndarray | None = None  # float64 (N, 6) label probabilities in SUBTYPE_LABELS order, "any" last
    subtype_targets: np.ndarray | None = None  # int64 (N, 6) targets, -1 = unknown subtype of a positive scan


def select_cases(bundle: Bundle, cohort: PreparedCohort, split: str = "auto") -> tuple[list[str], dict[str, Any]]:
    """The scan ids to evaluate and a description of how they were chosen (for metrics.json)."""
    if split not in SPLIT_CHOICES:
        raise InputError(f"split must be one of {', '.join(SPLIT_CHOICES)}, got {split!r}")
    ids = cohort.scan_ids()
    seen = bundle.training_splits()
    column = {r.scan_id: r.extra[SPLIT_COLUMN].strip().lower() for r in cohort.rows if SPLIT_COLUMN in r.extra}
    if split == "all":
        used = [s for s in ids if seen.get(s) in ("train", "val")]
        return ids, {"split": "all", "cases": len(ids), "includes_training_cases": len(used)}
    if split == "test":
        if column:
            chosen, source = [s for s in ids if column.get(s) == "test" and seen.get(s) not in ("train", "val")], \
                "manifest split column"
        elif seen:
            chosen, source = [s for s in ids if seen.get(s) == "test"], "the bundle's splits.csv"
        else:
            raise InputError("--split test needs a manifest split column or a bundle with splits.csv", bundle.path)
        if not chosen:
            raise InputError(f"no test cases in the manifest (by {source})", cohort.manifest_path)
        return chosen, {"split": "test", "chosen_by": source, "cases": len(chosen)}
    chosen = [s for s in ids if seen.get(s) not in ("train", "val")]
    if column:
        chosen = [s for s in chosen if column.get(s, "test") == "test"]
    if not chosen:
        raise InputError("every scan of the manifest was used to train or validate this bundle; "
                         "nothing is left to evaluate", cohort.manifest_path)
    return chosen, {"split": "auto", "cases": len(chosen),
                    "left_out_trained_or_validated": len(ids) - len(chosen) if not column else None,
                    "chosen_by": "manifest split column" if column else "all scans not in the bundle's train/val split"}


def score_bundle(bundle: Bundle, cohort: PreparedCohort, scan_ids: Sequence[str],
                 progress: Progress | None = None) -> Scores:
    """Score every scan with the bundle (cohort prepared with ``bundle.input_prep``, as `predict`
    does, or with the training preparation ``bundle.prep``); a bundle with subtypes also gives each
    scan's label probabilities (same pass) and the manifest's targets."""
    from ichdet.engine.scoring import score_scan

    if cohort.spec not in (bundle.input_prep, bundle.prep):
        raise InputError(f"cohort prepared as {cohort.spec.key()} but the bundle needs {bundle.input_prep.key()}")
    scores, label_probs, seconds = [], [], 0.0
    for i, sid in enumerate(scan_ids):
        t0 = time.perf_counter()  # reading and preparing are timed too: end-to-end seconds per scan
        result = score_scan(bundle.kind, bundle.model, cohort[sid].image, bundle.context, bundle.aggregate, bundle.svm)
        seconds += time.perf_counter() - t0
        scores.append(result.probability)
        label_probs.append(result.label_probs)
        if progress is not None:
            progress(i + 1, len(scan_ids))
    multi = bool(label_probs) and label_probs[0] is not None  # the bundle's labels (`Kind.labels`) decide, for every scan
    return Scores(bundle.name, list(scan_ids), cohort.labels(scan_ids), np.asarray(scores, dtype=np.float64),
                  bundle.threshold, seconds / max(len(scan_ids), 1),
                  np.stack(label_probs).astype(np.float64) if multi else None,
                  cohort.label_targets(scan_ids) if multi else None)


def model_metrics(s: Scores, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The metrics-JSON entry of one model (design.md schema + bootstrap CI, calibration)."""
    from ichdet.evaluation.comparison import model_entry

    out = model_entry(s.y, s.scores, s.threshold, n_boot, seed)
    out["operating_point"] = "max_sensitivity (chosen on validation data, applied unchanged)"
    out["seconds_per_scan"] = s.seconds_per_scan
    if np.all((s.scores >= 0) & (s.scores <= 1)):
        out["reliability"] = reliability_curve(s.y, s.scores, n_bins=10)
    if s.subtypes is not None:
        out.update(subtype_metrics(s.subtype_targets, s.subtypes))
    return out


SUBTYPE_CSV_COLUMNS = [f"p_{n}" for n in SUBTYPE_LABELS] + [f"y_{n}" for n in SUBTYPE_LABELS[:-1]]


def subtype_cells(probs: Any, targets: Any) -> list[Any]:
    """One case's `SUBTYPE_CSV_COLUMNS` cells: label probabilities (6,) ("any" last), then the five
    subtype targets of targets (6,) (-1 unknown)."""
    return [repr(float(v)) for v in probs] + [int(v) for v in targets[:-1]]


def write_predictions(path: Path, s: Scores, cohort: PreparedCohort | None = None) -> Path:
    """predictions.csv: scan_id, patient_id, label, score, threshold, decision; with subtypes also
    p_LABEL (each label's probability, "any" last) and y_SUBTYPE (targets, -1 unknown)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    sub = s.subtypes is not None
    w.writerow(["scan_id", "patient_id", "label", "score", "threshold", "decision"] + (SUBTYPE_CSV_COLUMNS if sub else []))
    for i, (sid, y, p) in enumerate(zip(s.scan_ids, s.y, s.scores)):
        pid = cohort.row(sid).patient_id if cohort is not None else ""
        extra = subtype_cells(s.subtypes[i], s.subtype_targets[i]) if sub else []
        w.writerow([sid, pid, int(y), repr(float(p)), repr(float(s.threshold)), int(p >= s.threshold)] + extra)
    return write_text_atomic(path, buf.getvalue())


def evaluate_bundle(model: str | Path, manifest: str | Path, out: str | Path, split: str = "auto",
                    cache: str | Path | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Score a bundle on a manifest's held-out scans and write the evaluation folder:
    metrics.json, predictions.csv, roc.png (with its 95% bootstrap band), confusion.png (and for a
    segmentation bundle segmentation.md and bland_altman.png)."""
    from ichdet.evaluation.comparison import roc_curves
    from ichdet.report import confusion_figure, reliability_figure, roc_figure

    bundle = load_bundle(model)
    cohort = PreparedCohort(Path(manifest), bundle.input_prep, cache=PreparedCache(cache) if cache else None,
                            slice_labels_path=None)
    ids, how = select_cases(bundle, cohort, split)
    y = cohort.labels(ids)
    if y.min() == y.max():
        raise InputError(f"the {len(ids)} case(s) to evaluate are all {'positive' if y[0] else 'negative'}; "
                         "AUC needs both classes", cohort.manifest_path)
    seg = None
    if bundle.kind == "segmentation":
        from ichdet.evaluation.seg_scores import score_segmentation, segmentation_summary

        scores, seconds, records, subtyped = score_segmentation(bundle, cohort, ids, progress)
        s = Scores(bundle.name, list(ids), y, scores, bundle.threshold, seconds)
        seg = segmentation_summary(records, subtyped)
    else:
        s = score_bundle(bundle, cohort, ids, progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    m = model_metrics(s)
    write_predictions(out / "predictions.csv", s, cohort)
    roc_figure(roc_curves(s.y, {s.name: s.scores}, {s.name: m}, n_boot=1000), out / "roc.png",
               title=f"{s.name}: ROC, 95% bootstrap band")
    confusion_figure(m["tp"], m["fp"], m["tn"], m["fn"], out / "confusion.png",
                     title=f"{s.name} at threshold {s.threshold:.3g} (chosen on validation data)")
    if "reliability" in m:
        reliability_figure([{"name": s.name, **m["reliability"]}], out / "reliability.png")
    result = {"ichdet_version": ichdet.__version__,
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "bundle": str(bundle.path.resolve()), "bundle_kind": bundle.kind,
              "data": {"manifest": str(Path(manifest).resolve()), **how},
              "models": {s.name: m}}
    if seg is not None:
        from ichdet.report.segmentation import segmentation_section

        result["segmentation"] = seg
        write_text_atomic(out / "segmentation.md", segmentation_section(seg, out / "bland_altman.png"))
    write_json(out / "metrics.json", result)
    return result


def evaluate_images(model: str | Path, images: str | Path, labels: str | Path, out: str | Path,
                    patient_column: str | None = None, cache: str | Path | None = None,
                    progress: Progress | None = None) -> dict[str, Any]:
    """A 2D bundle (e.g. from `ichdet cv`) on another labelled image folder: the folder becomes
    OUT/data/manifest.csv (as `ichdet prepare folder` writes it), then `evaluate_bundle` on all of it."""
    from ichdet.datasets.adapters.folder import prepare_folder

    out = Path(out)
    manifest = prepare_folder(images, out / "data" / "manifest.csv", labels=labels, images=images,
                              patient_column=patient_column)
    return evaluate_bundle(model, manifest, out, split="all", cache=cache, progress=progress)
