"""Report figures (ROC, confusion matrix, reliability) drawn on `matplotlib.figure.Figure`.

No pyplot: every figure is a standalone object, so nothing here touches matplotlib's global
state or needs a display. Files are written atomically (temp file beside the target, then
`os.replace`). A path ending in ``.svg`` gets the SVG plus a PNG sibling; otherwise PNG only.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ichdet.fileio import atomic_path

DPI = 120
_LINESTYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "<", ">")
FPR_LABEL = "1 − specificity (false-positive rate)"
TPR_LABEL = "sensitivity (true-positive rate)"


def _style(i: int, n: int) -> dict[str, Any]:
    """Colour, line style and marker for curve `i` of `n`: a qualitative map, distinct dashes."""
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return {"color": cmap(i % cmap.N), "linestyle": _LINESTYLES[i % len(_LINESTYLES)],
            "marker": _MARKERS[i % len(_MARKERS)]}


def _finite(x: Any) -> bool:
    """True for a real, finite number (Python or NumPy scalar, or a 0-d array)."""
    if x is None or isinstance(x, (str, bytes)):
        return False
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def roc_label(curve: Mapping[str, Any]) -> str:
    """Legend text such as ``"1-LSTM e2e  AUC 0.81 (0.74–0.88)"``; missing numbers read "—"."""
    auc = curve.get("auc")
    text = f"{curve['name']}  AUC {float(auc):.2f}" if _finite(auc) else f"{curve['name']}  AUC —"
    ci = curve.get("auc_ci")
    if _finite(auc) and ci is not None and len(ci) == 2 and all(_finite(v) for v in ci):
        text += f" ({float(ci[0]):.2f}–{float(ci[1]):.2f})"
    return text


def _xy(a: Any, b: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=float).ravel()
    y = np.asarray(b, dtype=float).ravel()
    if x.size == 0 or x.shape != y.shape:
        raise ValueError(f"{what}: need equal-length, non-empty arrays, got {x.size} and {y.size}")
    return x, y


def _unit_square(ax: Axes, xlabel: str, ylabel: str) -> None:
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, zorder=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write `fig` atomically: PNG at `path`, or SVG at `path` plus PNG beside it for ``.svg``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".svg"):
        raise ValueError(f"{path}: figure path must end in .png or .svg")
    targets = [(path.with_suffix(".png"), "png")]
    if suffix == ".svg":
        targets.append((path, "svg"))
    for target, fmt in targets:
        meta = {"Software": None} if fmt == "png" else {"Date": None}
        with atomic_path(target, suffix=f".{fmt}") as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=meta)
    return path


def roc_figure(curves: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """ROC curves with optional CI bands and operating points; returns `path`.

    Each curve: ``{"name", "fpr", "tpr", "auc", "auc_ci": [lo, hi] | None,
    "band": {"fpr", "low", "high"} | None, "point": {"fpr", "tpr"} | None}``.
    The curve is drawn through its ROC vertices (already a staircase for untied scores;
    tied scores give the honest diagonal segment).
    """
    if not curves:
        raise ValueError("roc_figure: no curves to draw")
    fig = Figure(figsize=(6.4, 6.4), layout="constrained")
    ax = fig.add_subplot()
    n = len(curves)
    handles: list[Line2D] = []
    any_point = False
    for i, c in enumerate(curves):
        st = _style(i, n)
        fpr, tpr = _xy(c["fpr"], c["tpr"], f"curve {c['name']!r} fpr/tpr")
        band = c.get("band")
        if band is not None:
            bx, lo = _xy(band["fpr"], band["low"], f"curve {c['name']!r} band low")
            _, hi = _xy(band["fpr"], band["high"], f"curve {c['name']!r} band high")
            ax.fill_between(bx, lo, hi, color=st["color"], alpha=0.12, linewidth=0, zorder=2)
        ax.plot(fpr, tpr, color=st["color"], linestyle=st["linestyle"], linewidth=1.8,
                zorder=3, clip_on=False)
        point = c.get("point")
        has_point = point is not None and _finite(point.get("fpr")) and _finite(point.get("tpr"))
        marker = dict(marker=st["marker"], markersize=7, markeredgecolor="black", markeredgewidth=0.8)
        any_point = any_point or has_point
        if has_point:
            ax.plot([point["fpr"]], [point["tpr"]], color=st["color"], linestyle="none", zorder=4,
                    clip_on=False, **marker)
        handles.append(Line2D([], [], color=st["color"], linestyle=st["linestyle"], linewidth=1.8,
                              label=roc_label(c), **(marker if has_point else {})))
    _unit_square(ax, FPR_LABEL, TPR_LABEL)
    ax.legend(handles=handles, loc="lower right", fontsize=9 if n <= 5 else 7.5, framealpha=0.92,
              handlelength=3.0, title="marker: operating point" if any_point else None,
              title_fontsize=7.5)
    ax.set_title(title or "ROC curves")
    return save_figure(fig, path)


def confusion_figure(tp: int, fp: int, tn: int, fn: int, path: str | Path,
                     title: str | None = None) -> Path:
    """2×2 confusion matrix (rows: truth, columns: prediction) with counts and row percentages."""
    counts = np.array([[tp, fn], [fp, tn]])
    if (counts < 0).any() or not np.all(np.equal(np.mod(counts, 1), 0)):
        raise ValueError(f"confusion_figure: counts must be non-negative integers, got {counts.tolist()}")
    counts = counts.astype(int)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)
    fig = Figure(figsize=(4.8, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(np.nan_to_num(frac), cmap="Blues", vmin=0, vmax=1)
    for r in range(2):
        for col in range(2):
            pct = "—" if np.isnan(frac[r, col]) else f"{100 * frac[r, col]:.1f}%"
            dark = not np.isnan(frac[r, col]) and frac[r, col] > 0.55
            ax.text(col, r, f"{counts[r, col]:,}\n({pct})", ha="center", va="center",
                    fontsize=13, color="white" if dark else "black")
    names = ["bleed", "no bleed"]
    ax.set_xticks([0, 1], [f"predicted\n{s}" for s in names])
    ax.set_yticks([0, 1], [f"{s}\n(n={totals[i, 0]:,})" for i, s in enumerate(names)])
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.tick_params(length=0)
    ax.set_title(title or "Confusion matrix (row percentages)")
    return save_figure(fig, path)


def reliability_figure(curves: Sequence[Mapping[str, Any]], path: str | Path,
                       title: str | None = None) -> Path:
    """Calibration plot: fraction positive against mean predicted probability per bin.

    Each curve: ``{"name", "mean_predicted", "fraction_positive", "count"}``; empty bins
    (count 0 or NaN values) are skipped. A lower panel shows the cases per bin.
    """
    if not curves:
        raise ValueError("reliability_figure: no curves to draw")
    fig = Figure(figsize=(6.0, 7.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    n = len(curves)
    for i, c in enumerate(curves):
        st = _style(i, n)
        x, y = _xy(c["mean_predicted"], c["fraction_positive"], f"curve {c['name']!r}")
        _, k = _xy(c["mean_predicted"], c["count"], f"curve {c['name']!r} count")
        keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(k) & (k > 0)
        top.plot(x[keep], y[keep], color=st["color"], linestyle=st["linestyle"],
                 marker=st["marker"], markersize=5, linewidth=1.5, label=c["name"], clip_on=False)
        bottom.plot(x[keep], k[keep], color=st["color"], linestyle=st["linestyle"],
                    marker=st["marker"], markersize=4, linewidth=1.0)
    top.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("fraction positive (observed)")
    top.grid(True, color="0.9", linewidth=0.6)
    top.legend(loc="upper left", fontsize=9 if n <= 5 else 7.5, framealpha=0.92, handlelength=3.0)
    top.set_title(title or "Reliability (calibration)")
    bottom.set_xlabel("mean predicted probability")
    bottom.set_ylabel("cases per bin")
    bottom.grid(True, color="0.9", linewidth=0.6)
    bottom.set_ylim(bottom=0)
    return save_figure(fig, path)
