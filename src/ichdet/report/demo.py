"""The demo's report page: the papers' 3D and 2D comparisons as tables and ROC figures."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ichdet.report.cv import cv_section
from ichdet.metrics import SUBTYPE_LABELS
from ichdet.report import (
    Column, FigureRef, Section, Table, fmt_auc_ci, fmt_num, fmt_p, fmt_pct, fmt_seconds, subtype_rows, subtype_table,
    write_report,
)

REAL_DATA = """\
The same pipeline runs on the public data sets; only the manifest changes:

`ichdet prepare rsna RSNA_ROOT --out rsna/manifest.csv` (RSNA 2019, slice labels included),
`ichdet prepare cq500 CQ500_ROOT --out cq500/manifest.csv` (scan labels from the radiologists' reads),
`ichdet prepare ctich CTICH_ROOT --out ctich/manifest.csv` (PhysioNet CT-ICH, NIfTI + slice labels).

Then `ichdet demo --data rsna/manifest.csv --out rsna-demo` runs every experiment of this report on it
(the 2D part needs per-slice labels), or run one experiment at a time with
`ichdet train 3d_slice_cnn --data rsna/manifest.csv --out runs/3d_slice_cnn` (the full-size configs in
`configs/`; the stages find each other through `model.init_from`) and test it with
`ichdet evaluate --model runs/3d_lstm2_e2e/bundle --data rsna/manifest.csv --out eval`.
For the 2D paper on its own image set: `ichdet cv --images head_ct/ --labels labels.csv --weights imagenet --out cv`."""


def _rows_3d(models: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"model": m["label"], "auc": m["auc"], "auc_ci": m["auc_ci"], "p": m["delong_p"],
             "sensitivity": m["sensitivity"], "specificity": m["specificity"], "accuracy": m["accuracy"],
             "threshold": m["threshold"], "seconds": m["seconds_per_scan"]} for m in models.values()]


def section_3d(result: Mapping[str, Any]) -> Section:
    d = result["data"]
    cols = [Column("model", "model"), Column("auc", "AUC (95% CI, DeLong)", fmt_auc_ci, whole_row=True),
            Column("p", "DeLong p vs proposed", fmt_p), Column("sensitivity", "sensitivity", fmt_pct),
            Column("specificity", "specificity", fmt_pct), Column("accuracy", "accuracy", fmt_pct),
            Column("threshold", "threshold", lambda v: fmt_num(v, 3)), Column("seconds", "s / scan", fmt_seconds)]
    text = [f"{d['test_scans']} held-out test scans ({d['test_positive']} with haemorrhage), split by patient and "
            "never used for training, model selection or the operating point. Sensitivity, specificity and "
            "accuracy are at the maximal-sensitivity operating point (the highest threshold reaching 98% "
            "sensitivity on the validation scans), applied unchanged to the test scans. DeLong p compares "
            "each model's AUC with the proposed model's on the same scans. Seconds per scan: the model and "
            "the aggregation on a prepared scan, on this CPU (`ichdet evaluate` times reading and "
            "preparing too)."]
    for name, config in (result.get("starts") or {}).items():
        text.append(f"`{name}` was trained by the config `{config}`: it started from the weights of the run its "
                    "`model.init_from` names (every layer but the new head) instead of from scratch.")
    figs = [FigureRef("Slice-based baselines: maximum and 95th-percentile slice probability and the SVM on "
                      "padded slice features (the paper's figure 3); markers at the operating point.",
                      "roc_3d_slice_baselines.png"),
            FigureRef("CNN + BiLSTM after LSTM training and after end-to-end training, and end-to-end without "
                      "staging (the paper's figure 4).", "roc_3d_lstm.png")]
    return Section("3D: whole-scan classification (CNN + BiLSTM vs slice aggregation)", text,
                   [Table("3D models on the held-out test scans", _rows_3d(result["models"]), cols)], figs)


def section_subtypes(result: Mapping[str, Any]) -> Section:
    """The subtype experiments: per label (five subtypes, then any) AUC with its 95% CI and the RSNA log loss."""
    sub = result["subtypes"]
    text = [f"The subtype experiments (configs `3d_slice_cnn_subtypes` -> `3d_slice_max_subtypes`, "
            f"`3d_lstm2_frozen_subtypes` -> `3d_lstm2_e2e_subtypes`): the same networks with one sigmoid per "
            f"subtype and one for any haemorrhage, trained with the RSNA weighted log loss on the same scans and "
            f"split, scored on the same {sub['test_scans']} held-out test scans. Each cell: the label's AUC with "
            "its 95% CI (DeLong) and the number of positive test scans; a positive scan whose subtype is not "
            "known is left out of that subtype. The slice baseline takes each label's maximum over the slices. "
            "RSNA log loss: the RSNA 2019 challenge's metric, the weighted multi-label log loss with \"any\" "
            "weighted twice (lower is better). Label probabilities per scan: `predictions_subtypes.csv`."]
    return Section("Subtypes: per-subtype AUC on the held-out test scans", text,
                   [subtype_table("3D subtype models on the held-out test scans", subtype_rows(sub["models"]),
                                  SUBTYPE_LABELS)])


def _notes(result: Mapping[str, Any]) -> list[str]:
    if not result["synthetic"]:
        return [f"Data: {result['data']['manifest']}. Profile: {result['profile']}."]
    d = result["data"]
    return [f"These results come from SYNTHETIC head CTs ({d['scans']} phantom scans of {d['slices']} slices, "
            f"{d['size']} px, difficulty {d['difficulty']}), made by `ichdet synth`. They show that the pipeline "
            "works end to end; they say nothing about performance on patients. The "
            f"{result['profile']} profile trains laptop-sized models for minutes, not the papers' models."]


def write_demo_report(report: Path, result: Mapping[str, Any]) -> tuple[Path, Path]:
    sections = [section_3d(result)]
    if result.get("subtypes"):
        sections.append(section_subtypes(result))
    if result.get("segmentation"):
        from ichdet.report.segmentation import segmentation_report_section

        seg = result["segmentation"]
        section = segmentation_report_section(seg, "bland_altman.png")
        section.paragraphs.insert(0, f"`{seg['model']}` (U-Net on the ImageNet EfficientNet-Lite0 encoder, trained on "
                                  "the cohort's masks) on the same held-out test scans as the 3D models, each scan "
                                  "segmented on its own voxels as `ichdet predict` does"
                                  + (f"; its scan score (largest P(bleed)) has AUC {seg['scan_auc']:.3f}"
                                     if seg.get("scan_auc") is not None else "")
                                  + f"; {seg['seconds_per_scan']:.2f} s per scan.")
        sections.append(section)
    if result.get("cv"):
        labels = {n: m.get("label", n) for n, m in result["cv"]["models"].items()}
        sections.append(cv_section(result["cv"], labels, "roc_2d.png"))
    sec = result["seconds"]
    bundles = ", ".join(f"`{n}`" for n in result["bundles"])
    sections.append(Section("Run the same on real CT", [REAL_DATA]))
    sections.append(Section("How this report was made", [
        f"`ichdet demo{' --quick' if result['profile'] == 'quick' else ''}` (ichdet {result['ichdet_version']}, "
        f"{result['created']}): {sec['total']:.0f} s in all, {sec['synth']:.0f} s for the cohort, "
        f"{sum(sec['train_3d'].values()):.0f} s for the 3D experiments, {sec['cv_2d']:.0f} s for the 2D "
        "cross-validation (runs that already existed are reused, so a rerun is faster)"
        + (f", on {result['machine']['cpu']}, training in {result['machine']['precision']} on "
           f"{result['machine']['device']}." if result.get("machine") else "."),
        f"Every trained model is kept as a bundle under `bundles/` beside this report's folder: {bundles}. "
        "Try `ichdet predict SCAN --model bundles/3d_lstm2_e2e` or `ichdet evaluate --model bundles/NAME --data MANIFEST`.",
        "All numbers are in `metrics.json` next to this page."])
    )
    return write_report(report, "ichdet: reproducing the papers' comparisons", sections, notes=_notes(result))
