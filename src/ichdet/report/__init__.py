"""Report rendering: figures, tables and the HTML/Markdown page. Numbers come in computed;
this package only draws and formats them (no torch, no training engine, no pyplot state)."""
from ichdet.report.figures import confusion_figure, reliability_figure, roc_figure, roc_label, save_figure
from ichdet.report.render import FigureRef, Section, Table, write_report
from ichdet.report.subtypes import fmt_subtype, subtype_rows, subtype_table
from ichdet.report.tables import (
    DASH,
    Column,
    fmt_auc_ci,
    fmt_ci,
    fmt_num,
    fmt_p,
    fmt_pct,
    fmt_seconds,
    html_table,
    is_missing,
    markdown_table,
)

__all__ = [
    "DASH", "Column", "FigureRef", "Section", "Table",
    "confusion_figure", "fmt_auc_ci", "fmt_subtype", "subtype_rows", "subtype_table", "fmt_ci", "fmt_num", "fmt_p", "fmt_pct", "fmt_seconds",
    "html_table", "is_missing", "markdown_table", "reliability_figure", "roc_figure", "roc_label",
    "save_figure", "write_report",
]
