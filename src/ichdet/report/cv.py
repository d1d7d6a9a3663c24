"""The cross-validation section of a report (`ichdet cv`'s report.md, the demo's 2D section):
its table, text and ROC figure, from metrics.json's content (`ichdet.evaluation.cv_results`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ichdet.metrics import SUBTYPE_LABELS
from ichdet.report.figures import roc_figure
from ichdet.report.render import FigureRef, Section, Table, write_report
from ichdet.report.subtypes import subtype_rows, subtype_table
from ichdet.report.tables import Column, fmt_auc_ci, fmt_p, fmt_pct


def write_cv_report(out: Path, result: Mapping[str, Any], labels: Mapping[str, str], curves: Any,
                    notes: list[str]) -> tuple[Path, Path]:
    """OUT/roc.png from the ROC `curves` (`ichdet.evaluation.comparison.roc_curves`), then
    OUT/report.md and index.html around `cv_section`."""
    roc_figure(curves, out / "roc.png", title=f"{result['cv']['folds']}-fold cross-validation, pooled out-of-fold ROC")
    return write_report(out, f"ichdet cv: {comparison_title(result['models'])}", [cv_section(result, labels, "roc.png")],
                        notes=notes)


def comparison_title(models) -> str:
    """"CNN vs AlexNet vs AlexNet-SVM", and "vs EfficientNet" when EfficientNet models are among `models`."""
    return "CNN vs AlexNet vs AlexNet-SVM" + (" vs EfficientNet" if any("efficientnet" in m for m in models) else "")


def cv_table_rows(result: Mapping[str, Any], labels: Mapping[str, str]) -> list[dict[str, Any]]:
    rows = []
    names = list(result["models"])
    started = result["cv"].get("started_from", {})  # absent in metrics.json of older runs
    for name, m in result["models"].items():
        fold_aucs = [f["auc"] for f in m["folds"] if f["auc"] == f["auc"]]
        rows.append({"model": labels.get(name, name), "start": started.get(name), "auc": m["auc"], "auc_ci": m["auc_ci"],
                     "fold_auc": f"{np.mean(fold_aucs):.3f} ± {np.std(fold_aucs):.3f}" if fold_aucs else None,
                     "accuracy": m["accuracy"], "sensitivity": m["sensitivity"], "specificity": m["specificity"],
                     **{f"p_{o}": m["delong_pairwise"].get(o) for o in names}})
    return rows


def cv_section(result: Mapping[str, Any], labels: Mapping[str, str], roc: str) -> Section:
    names = list(result["models"])
    cols = [Column("model", "model")]
    cols += [Column("start", "started from")] if "started_from" in result["cv"] else []
    cols += [Column("auc", "pooled AUC (95% CI, DeLong)", fmt_auc_ci, whole_row=True),
            Column("fold_auc", "per-fold AUC (mean ± sd)"), Column("accuracy", "accuracy", fmt_pct),
            Column("sensitivity", "sensitivity", fmt_pct), Column("specificity", "specificity", fmt_pct)]
    cols += [Column(f"p_{o}", f"DeLong p vs {labels.get(o, o)}", fmt_p) for o in names]
    d, c = result["data"], result["cv"]
    text = (f"{d['images']} images of {d['patients']} patients ({d['positives']} with haemorrhage), "
            f"{c['folds']} folds stratified by label and grouped by patient (seed {c['seed']}). "
            "Every model chose its epoch (and the SVM its C) on its training folds only; the held-out fold "
            "was scored once. \"Started from\": the network's weights before training on these images "
            "(imagenet: pretrained; trained network: the SVM reads the fold's own trained network). AUC is pooled over the out-of-fold scores; accuracy, sensitivity and "
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
    return Section(f"2D: {comparison_title(names)} (cross-validation)", paragraphs, tables,
                   [FigureRef("Pooled out-of-fold ROC curves (95% CIs of the AUC in the table); markers at the decision "
                              "threshold.", roc)])
