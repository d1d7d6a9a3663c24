"""`ichdet cv`'s results: metrics.json, predictions.csv and (through `ichdet.report.cv`) roc.png and
report.md/index.html from the out-of-fold scores of every model (pooled over folds, plus per-fold
values).

An out-of-fold record per model (`oof[name]`) holds parallel lists: ids, y (label), p (score),
t (the fold model's max-sensitivity threshold), fold, and for a subtype model sub (label
probabilities (6,)) and ysub (targets (6,), -1 unknown).
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np

import ichdet
from ichdet.evaluation.comparison import compare, operating_stats, roc_curves
from ichdet.evaluation.evaluate import SUBTYPE_CSV_COLUMNS, subtype_cells
from ichdet.fileio import write_json, write_text_atomic
from ichdet.metrics import roc_auc, subtype_metrics
from ichdet.report.cv import write_cv_report

DECISION_THRESHOLD = 0.5  # the classifiers' own decision (softmax argmax, Platt-scaled SVM)

def _aligned(oof: Mapping[str, Mapping[str, list]], key: str, ids: list[str]) -> dict[str, np.ndarray]:
    """Every model's per-case values `key` ("p" scores, "t" thresholds) in the case order `ids`."""
    out = {}
    for name, o in oof.items():
        pos = {sid: i for i, sid in enumerate(o["ids"])}
        out[name] = np.asarray([o[key][pos[s]] for s in ids], dtype=np.float64)
    return out


def per_fold(o: Mapping[str, list], threshold: float) -> list[dict[str, Any]]:
    """AUC, accuracy, sensitivity and specificity of each held-out fold at `threshold`."""
    folds = np.asarray(o["fold"])
    y, p = np.asarray(o["y"], dtype=np.int64), np.asarray(o["p"], dtype=np.float64)
    rows = []
    for f in sorted(set(folds.tolist())):
        k = folds == f
        st = operating_stats(y[k], p[k], threshold) if 0 < y[k].sum() < k.sum() else None
        rows.append({"fold": int(f), "n": int(k.sum()), "auc": roc_auc(y[k], p[k]),
                     **({key: st[key] for key in ("accuracy", "sensitivity", "specificity")} if st else
                        {"accuracy": float(np.mean((p[k] >= threshold) == y[k]))})})
    return rows


def subtype_folds(o: Mapping[str, list]) -> list[dict[str, Any]]:
    """Each held-out fold's per-label AUCs (95% CI) and RSNA log loss of a subtype model."""
    folds = np.asarray(o["fold"])
    y, p = np.asarray(o["ysub"], dtype=np.int64), np.asarray(o["sub"], dtype=np.float64)
    return [{"fold": int(f), "n": int((folds == f).sum()), **subtype_metrics(y[folds == f], p[folds == f])}
            for f in sorted(set(folds.tolist()))]


def write_cv_outputs(out: Path, oof: Mapping[str, Mapping[str, list]], labels: Mapping[str, str],
                     settings: Mapping[str, Any], bundles: Mapping[str, str], n_images: int, n_patients: int,
                     notes: list[str]) -> dict[str, Any]:
    """Write OUT/predictions.csv, metrics.json, roc.png and the report; returns metrics.json's content.
    `labels`: each model's display name; `settings`: metrics.json's "cv" entry (folds, seed, ...);
    `bundles`: the final models' bundle folders; `notes`: the report's notes."""
    first = next(iter(oof.values()))  # every model's cases, in the first model's order
    ids, y = list(first["ids"]), np.asarray(first["y"], dtype=np.int64)
    scores, fold_thresholds = _aligned(oof, "p", ids), _aligned(oof, "t", ids)
    models = compare(y, scores, {m: DECISION_THRESHOLD for m in scores})
    for name, m in models.items():
        ms = operating_stats(y, scores[name], fold_thresholds[name])
        m["decision"] = "score >= 0.5 (the classifier's own decision)"
        m["max_sensitivity"] = {k: ms[k] for k in ("threshold", "sensitivity", "specificity", "accuracy",
                                                     "sensitivity_ci", "specificity_ci", "accuracy_ci")}
        m["max_sensitivity"]["chosen_on"] = "each fold's validation part of its training folds"
        m["folds"] = per_fold(oof[name], DECISION_THRESHOLD)
        m["label"] = labels[name]
        if oof[name].get("sub"):  # a subtype model: per-label AUCs pooled over the folds, and per fold
            m.update(subtype_metrics(np.asarray(oof[name]["ysub"], dtype=np.int64),
                                     np.asarray(oof[name]["sub"], dtype=np.float64)))
            m["subtype_folds"] = subtype_folds(oof[name])
        if name in bundles:
            m["bundle"] = bundles[name]
    write_oof_csv(out / "predictions.csv", oof)
    curves = roc_curves(y, scores, models, labels, band=len(scores) == 1)
    result = {"ichdet_version": ichdet.__version__,
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "data": {"images": n_images, "patients": n_patients, "positives": int(y.sum())},
              "cv": dict(settings),
              "models": models}
    write_json(out / "metrics.json", result)
    write_cv_report(out, result, labels, curves, notes)
    return result


def write_oof_csv(path: Path, oof: dict[str, dict[str, Any]]) -> Path:
    """predictions.csv: one row per image and model (out-of-fold score, fold, threshold); with a
    subtype model also p_LABEL (its label probabilities, "any" last) and y_SUBTYPE (targets, -1
    unknown), empty for the binary models."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    sub = any(o["sub"] for o in oof.values())
    w.writerow(["model", "scan_id", "fold", "label", "score", "max_sensitivity_threshold"]
               + (SUBTYPE_CSV_COLUMNS if sub else []))
    for name, o in oof.items():
        for i, (sid, f, y, p, t) in enumerate(zip(o["ids"], o["fold"], o["y"], o["p"], o["t"])):
            extra = (subtype_cells(o["sub"][i], o["ysub"][i]) if o["sub"]
                     else [""] * len(SUBTYPE_CSV_COLUMNS)) if sub else []
            w.writerow([name, sid, f, int(y), repr(float(p)), repr(float(t))] + extra)
    return write_text_atomic(path, buf.getvalue())
