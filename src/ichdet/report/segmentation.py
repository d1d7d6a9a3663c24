"""The segmentation section of a report: Dice per label, volume error in mL, the model against ABC/2, and a
Bland-Altman figure, from metrics.json's "segmentation" (`ichdet.evaluation.segmentation.segmentation_metrics`).
Numbers arrive computed; this lays them out and draws them."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ichdet.report.figures import _style, save_figure
from ichdet.report.render import FigureRef, Section, Table
from ichdet.report.tables import DASH, Column, fmt_ci, fmt_num, is_missing, markdown_table

ML_DIGITS = 2  # volumes and their errors, in mL
DICE_DIGITS = 3
TITLE = "Segmentation: Dice and bleed volume"
ESTIMATES = (("model", "model (mask volume)", "model_ml"), ("abc2_truth", "ABC/2 (true outline)", "abc2_ml"),
             ("abc2_model", "ABC/2 (model outline)", "abc2_model_ml"))


def _ml(x: Any, signed: bool = False) -> str:
    """mL to two decimals ("+0.25" for a signed error); missing: "—"."""
    return DASH if is_missing(x) else f"{float(x):{'+' if signed else ''}.{ML_DIGITS}f}"


def _range(lo: Any, hi: Any, digits: int = ML_DIGITS) -> str:
    return DASH if is_missing(lo) or is_missing(hi) else f"{float(lo):.{digits}f} to {float(hi):.{digits}f}"


def dice_rows(seg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per label: its Dice summary."""
    rows = []
    for label, m in seg["labels"].items():
        d, big = m["dice"], m["dice_large"]
        rows.append({"label": label, "n": d["n"], "median": fmt_ci(d["median"], d["median_ci"], DICE_DIGITS),
                     "iqr": _range(d["q1"], d["q3"], DICE_DIGITS),
                     "large": f"{fmt_num(big['median'], DICE_DIGITS)} (n={big['n']})"})
    return rows


def volume_rows(seg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per label: the model's volume error on the scans whose truth holds that label."""
    rows = []
    for label, m in seg["labels"].items():
        e, fp = m["volume_error_ml"], m["false_positive_ml"]
        rows.append({"label": label, "n": e["n"], "bias": _ml(e["mean"], True), "mean_abs": _ml(e["mean_abs"]),
                     "median_abs": _ml(e["median_abs"]), "loa": _range(*e["bland_altman"]["loa"]),
                     "fp": f"{fp['scans_with_volume']} of {fp['n']}, max {_ml(fp['max'])}"})
    return rows


def total_rows(seg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per estimate of the total bleed volume (model, ABC/2 on the true and on the model's outline)."""
    rows = []
    for key, name, _ in ESTIMATES:
        e = seg["total"].get(key)
        if e is None:
            continue
        ba = e["bland_altman"]
        rows.append({"estimate": name, "n": e["n"], "bias": f"{_ml(ba['bias'], True)} ({_range(*ba['bias_ci'])})"
                     if not is_missing(ba["bias_ci"][0]) else _ml(ba["bias"], True),
                     "mean_abs": _ml(e["mean_abs"]), "median_abs": _ml(e["median_abs"]), "loa": _range(*ba["loa"])})
    return rows


def segmentation_tables(seg: Mapping[str, Any]) -> list[Table]:
    """The section's three tables: Dice per label, volume error per label, total volume by estimate."""
    n = [Column("n", "scans", align="right")]
    return [
        Table("Dice per label", dice_rows(seg),
              [Column("label", "label"), *n, Column("median", "median Dice (95% CI)"),
               Column("iqr", "IQR"), Column("large", f"median Dice, bleeds ≥ {_min_ml(seg):g} mL")]),
        Table("Volume error of the model (model − truth, mL)", volume_rows(seg),
              [Column("label", "label"), *n, Column("bias", "mean error"), Column("mean_abs", "mean |error|"),
               Column("median_abs", "median |error|"), Column("loa", "95% limits of agreement"),
               Column("fp", "scans without it where the model finds some, max mL")]),
        Table("Total bleed volume: model and ABC/2 against the truth (mL)", total_rows(seg),
              [Column("estimate", "estimate"), *n, Column("bias", "bias (95% CI)"),
               Column("mean_abs", "mean |error|"), Column("median_abs", "median |error|"),
               Column("loa", "95% limits of agreement")]),
    ]


def _min_ml(seg: Mapping[str, Any]) -> float:
    any_label = next(iter(seg["labels"].values()), None)
    return float(any_label["dice_large"]["min_true_ml"]) if any_label else 5.0


def verdict(seg: Mapping[str, Any]) -> str:
    """One sentence: which total-volume estimate is closer to the truth, by median absolute error."""
    t = seg["total"]
    m, a = t["median_abs_error_ml"]["model"], t["median_abs_error_ml"]["abc2"]
    if t["closer_to_truth"] is None:
        return "No scan with a true bleed: the volume errors are undefined."
    who = {"model": "The model's volume is closer to the truth than ABC/2",
           "abc2": "ABC/2 is closer to the truth than the model's volume",
           "tie": "The model's volume and ABC/2 are equally close to the truth"}[t["closer_to_truth"]]
    return f"{who}: median absolute error {_ml(m)} mL against {_ml(a)} mL, over {t['n']} scans with a bleed."


def _bland_altman_panel(ax: Axes, truth: np.ndarray, measured: np.ndarray, ba: Mapping[str, Any] | None,
                        name: str, i: int) -> None:
    keep = np.isfinite(truth) & np.isfinite(measured) & (truth > 0)
    mean, diff = (measured[keep] + truth[keep]) / 2, measured[keep] - truth[keep]
    st = _style(i, 3)
    ax.axhline(0, color="0.6", linestyle=":", linewidth=1)
    ax.scatter(mean, diff, s=22, color=st["color"], marker=st["marker"], edgecolors="black", linewidths=0.4,
               zorder=3, label=f"scans (n={int(keep.sum())})")
    if ba is not None and not is_missing(ba.get("bias")):
        ax.axhline(ba["bias"], color=st["color"], linewidth=1.6, label=f"bias {ba['bias']:+.2f} mL")
        lo, hi = ba["loa"]
        if not (is_missing(lo) or is_missing(hi)):
            ax.axhline(lo, color=st["color"], linestyle="--", linewidth=1.2,
                       label=f"95% limits {lo:+.2f} to {hi:+.2f} mL")
            ax.axhline(hi, color=st["color"], linestyle="--", linewidth=1.2)
    if not keep.any():
        ax.text(0.5, 0.5, "no scan with a true bleed", transform=ax.transAxes, ha="center", va="center")
    ax.set_title(f"{name} − truth")
    ax.set_xlabel("mean of the two volumes (mL)")
    ax.grid(True, color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.legend(loc="best", fontsize=8, framealpha=0.92)


def bland_altman_figure(seg: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Bland-Altman plots of the total bleed volume on the scans with a true bleed: the model against the truth
    and ABC/2 (true outline) against the truth, side by side on a shared difference axis; returns `path`."""
    scans: Sequence[Mapping[str, Any]] = seg["scans"]

    def column(key: str) -> np.ndarray:
        return np.array([np.nan if is_missing(s.get(key)) else float(s[key]) for s in scans], dtype=float)

    truth = column("true_ml")
    fig = Figure(figsize=(10.0, 4.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for i, (ax, (key, name, col)) in enumerate(zip(axes, ESTIMATES[:2])):
        _bland_altman_panel(ax, truth, column(col), (seg["total"].get(key) or {}).get("bland_altman"), name, i)
    axes[0].set_ylabel("difference from the true volume (mL)")
    fig.suptitle(title or "Total bleed volume: Bland-Altman against the truth")
    return save_figure(fig, path)


def segmentation_report_section(seg: Mapping[str, Any], figure: str | Path | None = None) -> Section:
    """The section for `write_report`; `figure` is the Bland-Altman PNG's path relative to the report folder
    (drawn beforehand by `bland_altman_figure`), or None to leave it out."""
    text = [f"{seg['n_scans']} held-out scans. Dice per scan over the scans whose truth holds the label (what the model "
            "finds on the others is its false-positive volume, in the second table): median, interquartile range and a "
            "bootstrap 95% CI of the median. Volume errors are model − truth in mL over the scans whose truth "
            "holds the label; the limits of agreement are bias ± 1.96 SD (Bland & Altman). ABC/2 is the "
            "bedside estimate of the largest lesion (Kothari's slice weights), from the true outline as a "
            "reader would take it, and from the model's outline as `ichdet predict` reports it.",
            verdict(seg)]
    figs = [FigureRef("Bland-Altman plots of the total bleed volume: model − truth (left) and ABC/2 − truth "
                      "(right) against their mean; solid line the bias, dashed the 95% limits of agreement.",
                      figure)] if figure is not None else []
    return Section(TITLE, text, segmentation_tables(seg), figs)


def segmentation_section(metrics: Mapping[str, Any], figure_path: str | Path, link: str | None = None) -> str:
    """Draw the Bland-Altman PNG at `figure_path` and return the section as Markdown. `metrics` is the
    "segmentation" dict (or a metrics.json dict holding it); the image is linked as `link`, by default the
    figure's file name (Markdown saved beside it)."""
    seg = metrics.get("segmentation", metrics)
    path = bland_altman_figure(seg, figure_path)
    sec = segmentation_report_section(seg, link or path.name)
    out = [f"## {sec.title}", ""]
    for para in sec.paragraphs:
        out += [para, ""]
    for tab in sec.tables:
        out += [f"### {tab.name}", "", markdown_table(tab.rows, tab.columns)]
    for fig in sec.figures:
        out += [f"![Bland-Altman plots]({Path(fig.path).as_posix()})", "", f"*{fig.caption}*", ""]
    return "\n".join(out).rstrip("\n") + "\n"
