"""Tables as Markdown or HTML from a list of row dicts and a list of `Column` specs.

Formatting is the only logic here: numbers arrive computed. Missing values (None, NaN, a key
absent from the row) always render as an em dash "—"; cell text is escaped for its target
(pipes in Markdown, ``<>&"'`` in HTML).
"""
from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

DASH = "—"


def is_missing(x: Any) -> bool:
    """True for None and for a float/NumPy NaN."""
    return x is None or (isinstance(x, (float, np.floating)) and math.isnan(x))


def fmt_num(x: Any, digits: int = 3) -> str:
    """Default cell text: floats to `digits` decimals, ints with no decimals, the rest `str`."""
    if is_missing(x):
        return DASH
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.{digits}f}" if math.isfinite(x) else str(float(x))
    return str(x)


def fmt_ci(value: Any, ci: Sequence[Any] | None, digits: int = 3) -> str:
    """``"0.812 (0.741–0.883)"``; the interval is left off when absent or not finite."""
    if is_missing(value):
        return DASH
    text = f"{float(value):.{digits}f}"
    if ci is not None and len(ci) == 2 and not any(is_missing(v) for v in ci):
        text += f" ({float(ci[0]):.{digits}f}–{float(ci[1]):.{digits}f})"
    return text


def fmt_auc_ci(row: Mapping[str, Any], key: str = "auc") -> str:
    """AUC with its CI from a row: reads ``row[key]`` and ``row[key + "_ci"]``."""
    return fmt_ci(row.get(key), row.get(f"{key}_ci"))


def fmt_pct(x: Any, digits: int = 1) -> str:
    """A fraction as a percentage: 0.976 -> ``"97.6%"``."""
    return DASH if is_missing(x) else f"{100 * float(x):.{digits}f}%"


def fmt_p(p: Any) -> str:
    """A p-value: ``"<0.001"`` below 0.001, else three decimals (``"0.043"``)."""
    if is_missing(p):
        return DASH
    p = float(p)
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_seconds(x: Any) -> str:
    """A duration: 0.42 -> ``"0.42 s"``; below 0.01 s two significant digits (``"0.0042 s"``)."""
    if is_missing(x):
        return DASH
    x = float(x)
    return f"{x:.2f} s" if x == 0 or abs(x) >= 0.01 else f"{x:.2g} s"


@dataclass(frozen=True)
class Column:
    """One table column: which value, its header, and how to format it.

    `fmt` receives ``row[key]`` (missing values never reach it: they render "—"), or, with
    ``whole_row=True``, the whole row (for cells built from several keys, e.g. `fmt_auc_ci`).
    """

    key: str
    header: str
    fmt: Callable[[Any], str] | None = None
    whole_row: bool = False
    align: Literal["left", "right", "center"] = "left"

    def cell(self, row: Mapping[str, Any]) -> str:
        """The formatted, unescaped text of this column's cell in `row`."""
        if self.whole_row:
            if self.fmt is None:
                raise ValueError(f"column {self.key!r}: whole_row needs a formatter")
            return self.fmt(row)
        value = row.get(self.key)
        if is_missing(value):
            return DASH
        return (self.fmt or fmt_num)(value)


def _check(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> None:
    if not columns:
        raise ValueError("a table needs at least one column")
    for c in columns:
        if rows and not c.whole_row and all(c.key not in r for r in rows):
            raise KeyError(f"column {c.key!r} ({c.header!r}) is in none of the {len(rows)} rows")


def _md_escape(text: str) -> str:
    return " ".join(text.replace("\\", "\\\\").replace("|", "\\|").split())


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """A GitHub-flavoured Markdown table, one line per row, ending in a newline."""
    _check(rows, columns)
    rule = {"left": "---", "right": "---:", "center": ":---:"}
    lines = ["| " + " | ".join(_md_escape(c.header) for c in columns) + " |",
             "| " + " | ".join(rule[c.align] for c in columns) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(_md_escape(c.cell(row)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column],
               caption: str | None = None) -> str:
    """An HTML ``<table>`` (class ``report-table``) with escaped cells and an optional caption."""
    _check(rows, columns)

    def attr(c: Column) -> str:
        return "" if c.align == "left" else f' class="{c.align}"'

    out = ['<table class="report-table">']
    if caption:
        out.append(f"<caption>{html.escape(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th{attr(c)}>{html.escape(c.header)}</th>" for c in columns)
               + "</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td{attr(c)}>{html.escape(c.cell(row))}</td>" for c in columns)
                   + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out) + "\n"
