"""`ichdet cv`'s outputs: metrics.json, predictions.csv, roc.png and report.md/index.html from the
out-of-fold scores of every model (pooled over folds, plus per-fold values)."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Mapping

import numpy as np

import ichdet
from ichdet.comparison import compare, operating_stats, roc_curves
from ichdet.evaluate import subtype_metrics, write_json
from ichdet.metrics import SUBTYPE_LABELS, roc_auc
from ichdet.report import (
    Column, FigureRef, Section, Table, fmt_auc_ci, fmt_p, fmt_pct, roc_figure, subtype_rows, subtype_table, write_report,
)


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


def write_cv_outputs(out: Path, oof: Mapping[str, Mapping[str, list]], labels: Mapping[str, str], opts: Any,
                     bundles: Mapping[str, str], n_images: int, n_patients: int) -> dict[str, Any]:
    from ichdet.cv import DECISION_THRESHOLD, write_oof_csv

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
    roc_figure(roc_curves(y, scores, models, labels, band=len(scores) == 1), out / "roc.png",
               title=f"{opts.folds}-fold cross-validation, pooled out-of-fold ROC")
    result = {"ichdet_version": ichdet.__version__,
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "data": {"images": n_images, "patients": n_patients, "positives": int(y.sum())},
              "cv": {"folds": opts.folds, "seed": opts.seed, "grouped_by": "patient", "stratified": True,
                     "val_fraction_of_training_folds": opts.val_fraction, "weights": opts.weights or "random",
                     "quick": opts.quick, "epochs": opts.epochs, "subtypes": bool(getattr(opts, "subtypes", False))},
              "models": models}
    write_json(out / "metrics.json", result)
    write_report(out, "ichdet cv: CNN vs AlexNet vs AlexNet-SVM", [cv_section(result, labels, "roc.png")],
                 notes=_notes(opts))
    return result


def _notes(opts: Any) -> list[str]:
    notes = []
    from ichdet.cv import NETWORK, requested

    if not opts.weights and any(NETWORK.get(m, m) in ("alexnet", "alexnet-svm") for m in requested(opts)):
        notes.append("AlexNet started from random weights (no `--weights`): this is not the paper's transfer "
                     "learning. Pass `--weights imagenet` or a local copy of the official file.")
    return notes


def cv_table_rows(result: Mapping[str, Any], labels: Mapping[str, str]) -> list[dict[str, Any]]:
    rows = []
    names = list(result["models"])
    for name, m in result["models"].items():
        fold_aucs = [f["auc"] for f in m["folds"] if f["auc"] == f["auc"]]
        rows.append({"model": labels.get(name, name), "auc": m["auc"], "auc_ci": m["auc_ci"],
                     "fold_auc": f"{np.mean(fold_aucs):.3f} ± {np.std(fold_aucs):.3f}" if fold_aucs else None,
                     "accuracy": m["accuracy"], "sensitivity": m["sensitivity"], "specificity": m["specificity"],
                     **{f"p_{o}": m["delong_pairwise"].get(o) for o in names}})
    return rows


def cv_section(result: Mapping[str, Any], labels: Mapping[str, str], roc: str) -> Section:
    names = list(result["models"])
    cols = [Column("model", "model"), Column("auc", "pooled AUC (95% CI, DeLong)", fmt_auc_ci, whole_row=True),
            Column("fold_auc", "per-fold AUC (mean ± sd)"), Column("accuracy", "accuracy", fmt_pct),
            Column("sensitivity", "sensitivity", fmt_pct), Column("specificity", "specificity", fmt_pct)]
    cols += [Column(f"p_{o}", f"DeLong p vs {labels.get(o, o)}", fmt_p) for o in names]
    d, c = result["data"], result["cv"]
    text = (f"{d['images']} images of {d['patients']} patients ({d['positives']} with haemorrhage), "
            f"{c['folds']} folds stratified by label and grouped by patient (seed {c['seed']}). "
            "Every model chose its epoch (and the SVM its C) on its training folds only; the held-out fold "
            "was scored once. AUC is pooled over the out-of-fold scores; accuracy, sensitivity and "
            "specificity are at each classifier's own decision (score ≥ 0.5). DeLong p-values compare "
            "the models on the same images.")
    tables = [Table("2D models, pooled out-of-fold scores", cv_table_rows(result, labels), cols)]
    paragraphs = [text]
    sub = subtype_rows(result["models"], labels)
    if sub:
        paragraphs.append("The subtype models (one sigmoid per subtype and one for any haemorrhage, trained with "
                          "the RSNA weighted log loss) are in the table above through their \"any\" probability. "
                          "Below, each label's AUC (95% CI, DeLong) pooled over the out-of-fold predictions, with "
                          "the number of positive images; images whose subtype is not known are left out of that "
                          "subtype. RSNA log loss: the RSNA 2019 challenge's weighted multi-label log loss (\"any\" "
                          "weighted twice), lower is better. Per-fold values are in metrics.json (subtype_folds).")
        tables.append(subtype_table("2D subtype models, pooled out-of-fold predictions", sub, SUBTYPE_LABELS))
    return Section("2D: CNN vs AlexNet vs AlexNet-SVM (cross-validation)", paragraphs, tables,
                   [FigureRef("Pooled out-of-fold ROC curves (95% CIs of the AUC in the table); markers at the decision "
                              "threshold.", roc)])
