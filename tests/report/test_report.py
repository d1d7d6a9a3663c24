"""Report rendering: figures are real PNGs, tables format and escape, the page is written atomically."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from ichdet.report import (
    Column,
    FigureRef,
    Section,
    Table,
    confusion_figure,
    fmt_auc_ci,
    fmt_p,
    fmt_pct,
    fmt_seconds,
    html_table,
    markdown_table,
    reliability_figure,
    roc_figure,
    roc_label,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _curve(name: str, seed: int, point: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    fpr = np.concatenate([[0.0], np.sort(rng.uniform(0, 1, 20)), [1.0]])
    tpr = np.clip(np.sqrt(fpr) + rng.uniform(0, 0.05, fpr.size), 0, 1)
    tpr[0], tpr[-1] = 0.0, 1.0
    grid = np.linspace(0, 1, 51)
    mid = np.sqrt(grid)
    return {"name": name, "fpr": fpr, "tpr": np.maximum.accumulate(tpr), "auc": 0.81, "auc_ci": [0.74, 0.88],
            "band": {"fpr": grid, "low": np.clip(mid - 0.1, 0, 1), "high": np.clip(mid + 0.1, 0, 1)},
            "point": {"fpr": 0.3, "tpr": 0.55} if point else None}


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.01  # not a blank canvas


def _no_temp_files(folder: Path) -> None:
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def test_roc_figure_three_curves_with_bands_and_points(tmp_path: Path) -> None:
    curves = [_curve("1-LSTM e2e", 0), _curve("2D CNN | max", 1), _curve("SVM head", 2, point=False)]
    curves[2]["auc_ci"] = None
    out = roc_figure(curves, tmp_path / "roc.png", title="Test set")
    assert out == tmp_path / "roc.png"
    _assert_png(out)
    _no_temp_files(tmp_path)


def test_roc_figure_svg_writes_png_sibling(tmp_path: Path) -> None:
    out = roc_figure([_curve("a", 0)], tmp_path / "roc.svg")
    assert out.read_text(encoding="utf-8").lstrip().startswith("<?xml")
    _assert_png(tmp_path / "roc.png")


def test_roc_figure_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        roc_figure([], tmp_path / "roc.png")
    bad = _curve("a", 0)
    bad["tpr"] = bad["tpr"][:-1]
    with pytest.raises(ValueError, match="equal-length"):
        roc_figure([bad], tmp_path / "roc.png")
    with pytest.raises(ValueError, match=".png or .svg"):
        roc_figure([_curve("a", 0)], tmp_path / "roc.jpg")
    assert list(tmp_path.iterdir()) == []


def test_roc_label() -> None:
    assert roc_label({"name": "1-LSTM e2e", "auc": 0.812, "auc_ci": [0.741, 0.883]}) == "1-LSTM e2e  AUC 0.81 (0.74–0.88)"
    assert roc_label({"name": "x", "auc": 0.5, "auc_ci": None}) == "x  AUC 0.50"
    assert roc_label({"name": "x", "auc": math.nan, "auc_ci": [0.1, 0.2]}) == "x  AUC —"


def test_confusion_and_reliability_figures(tmp_path: Path) -> None:
    _assert_png(confusion_figure(tp=41, fp=7, tn=120, fn=1, path=tmp_path / "cm.png", title="At 98% sensitivity"))
    _assert_png(confusion_figure(0, 0, 5, 0, tmp_path / "cm_empty_row.png"))
    rel = [{"name": "A", "mean_predicted": [0.05, 0.3, np.nan, 0.9], "fraction_positive": [0.02, 0.35, np.nan, 0.8],
            "count": [50, 20, 0, 10]},
           {"name": "B", "mean_predicted": np.linspace(0.05, 0.95, 10), "fraction_positive": np.linspace(0, 1, 10),
            "count": np.arange(10) + 1}]
    _assert_png(reliability_figure(rel, tmp_path / "rel.png"))
    with pytest.raises(ValueError):
        confusion_figure(-1, 0, 0, 0, tmp_path / "bad.png")
    _no_temp_files(tmp_path)


COLUMNS = [Column("model", "Model"), Column("auc", "AUC (95% CI)", fmt_auc_ci, whole_row=True),
           Column("sens", "Sensitivity", fmt_pct, align="right"), Column("p", "p", fmt_p, align="right"),
           Column("t", "Time / scan", fmt_seconds, align="right")]
ROWS = [{"model": "1-LSTM e2e", "auc": 0.812, "auc_ci": [0.741, 0.883], "sens": 0.976, "p": 0.0004, "t": 0.42},
        {"model": "CNN | max", "auc": math.nan, "auc_ci": None, "sens": math.nan, "p": None, "t": 1.5}]


def test_markdown_table_exact() -> None:
    assert markdown_table(ROWS, COLUMNS) == (
        "| Model | AUC (95% CI) | Sensitivity | p | Time / scan |\n"
        "| --- | --- | ---: | ---: | ---: |\n"
        "| 1-LSTM e2e | 0.812 (0.741–0.883) | 97.6% | <0.001 | 0.42 s |\n"
        "| CNN \\| max | — | — | — | 1.50 s |\n")


def test_html_table_escapes_and_dashes() -> None:
    rows = [{"model": "<script>alert(1)</script>", "auc": 0.9, "auc_ci": [0.8, 0.95], "sens": 1.0, "p": 0.043,
             "t": math.nan}]
    out = html_table(rows, COLUMNS, caption="A & B")
    assert "<script>" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "<caption>A &amp; B</caption>" in out
    assert '<td class="right">0.043</td>' in out and '<td class="right">—</td>' in out
    assert out.count("<tr>") == 2


def test_table_unknown_column_is_an_error() -> None:
    with pytest.raises(KeyError, match="specificity"):
        markdown_table(ROWS, [Column("specificity", "Spec")])


def test_formatters() -> None:
    assert fmt_p(0.0004) == "<0.001"
    assert fmt_p(0.001) == "0.001"
    assert fmt_p(0.043) == "0.043"
    assert fmt_p(1.0) == "1.000"
    assert fmt_p(None) == fmt_p(math.nan) == fmt_p(np.float32("nan")) == "—"
    assert fmt_pct(0.976) == "97.6%" and fmt_pct(None) == "—"
    assert fmt_seconds(0.42) == "0.42 s" and fmt_seconds(0.0042) == "0.0042 s" and fmt_seconds(None) == "—"
    assert fmt_auc_ci({"auc": 0.812, "auc_ci": [0.741, 0.883]}) == "0.812 (0.741–0.883)"
    assert fmt_auc_ci({"auc": 0.812, "auc_ci": [math.nan, 0.9]}) == "0.812"
    assert fmt_auc_ci({}) == "—"


def test_write_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    roc_figure([_curve("A", 0), _curve("B", 1)], out / "figures" / "roc.png")
    confusion_figure(10, 2, 30, 1, out / "figures" / "cm.png")
    sections = [
        Section("Summary", ["Models trained with `ichdet train`.\nSecond line.", "Para <b>two</b>.\n\nPara three."],
                [Table("Test set", ROWS, COLUMNS)],
                [FigureRef("ROC <curves>", "figures/roc.png"), FigureRef("Confusion", Path("figures/cm.png"))]),
        Section("Summary", [], [Table("", ROWS[:1], COLUMNS)]),
    ]
    md_path, html_path = write_report(out, "ICH <report>", sections, notes=["SYNTHETIC DATA — not a clinical result"])
    assert (md_path, html_path) == (out / "report.md", out / "index.html")
    md, page = md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")

    banner = "SYNTHETIC DATA — not a clinical result"
    assert md.index(banner) < md.index("| Model |") and md.index(banner) < md.index("## Summary")
    assert page.index(banner) < page.index("<table") and page.index(banner) < page.index("<h2>")
    assert "![ROC <curves>](figures/roc.png)" in md and "| CNN \\| max |" in md

    assert '<img src="figures/roc.png"' in page and '<img src="figures/cm.png"' in page
    assert "<figcaption>ROC &lt;curves&gt;</figcaption>" in page
    assert "<code>ichdet train</code>" in page and "</code>.<br>" in page
    assert "Para &lt;b&gt;two&lt;/b&gt;." in page and "<b>" not in page
    assert "<p>Para three.</p>" in page
    assert "<title>ICH &lt;report&gt;</title>" in page
    assert 'id="summary"' in page and 'id="summary-2"' in page
    for ref in ("figures/roc.png", "figures/cm.png"):
        assert (out / ref).is_file()
    _no_temp_files(out)
    _no_temp_files(out / "figures")

    # rewriting replaces the files in place and still leaves no temp files
    write_report(out, "again", sections[:1], notes="synthetic data")
    assert "synthetic data" in (out / "report.md").read_text(encoding="utf-8")
    _no_temp_files(out)


def test_write_report_checks_figure_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path, "t", [Section("s", figures=[FigureRef("x", "missing.png")])])
    with pytest.raises(ValueError, match="relative"):
        write_report(tmp_path, "t", [Section("s", figures=[FigureRef("x", tmp_path / "a.png")])])
    assert list(tmp_path.iterdir()) == []


def test_report_package_does_not_import_torch() -> None:
    code = "import sys, ichdet.report; bad = [m for m in ('torch', 'ichdet.engine', 'matplotlib.pyplot') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


# ---------------------------------------------------------------- subtype table
def test_subtype_table_cells_and_rows():
    from ichdet.report import fmt_subtype, markdown_table, subtype_rows, subtype_table

    assert fmt_subtype({"auc": 0.8123, "auc_ci": [0.7411, 0.8834], "n_pos": 12, "n_neg": 30}) == "0.812 (0.741–0.883), 12 pos"
    assert fmt_subtype({"auc": 0.5, "auc_ci": None, "n_pos": 1, "n_neg": 9}) == "0.500, 1 pos"
    assert fmt_subtype({"auc": None, "auc_ci": None, "n_pos": 0, "n_neg": 9}) == "—, 0 pos"
    models = {"a": {"label": "Model A", "rsna_log_loss": 0.123456,
                    "subtypes": {"subdural": {"auc": 0.9, "auc_ci": [0.8, 1.0], "n_pos": 3, "n_neg": 5},
                                 "any": {"auc": 0.75, "auc_ci": [0.5, 1.0], "n_pos": 4, "n_neg": 4}}},
              "b": {"label": "binary", "auc": 0.7}}  # no subtypes: left out
    rows = subtype_rows(models)
    assert [r["model"] for r in rows] == ["Model A"]
    assert subtype_rows(models, {"a": "renamed"})[0]["model"] == "renamed"
    t = subtype_table("Subtypes", rows, ("epidural", "subdural", "any"))
    assert t.name == "Subtypes: AUC (95% CI), positive cases"
    assert markdown_table(t.rows, t.columns).splitlines() == [
        "| model | epidural | subdural | any | RSNA log loss (any ×2) |",
        "| --- | --- | --- | --- | --- |",
        "| Model A | — | 0.900 (0.800–1.000), 3 pos | 0.750 (0.500–1.000), 4 pos | 0.1235 |"]
