"""The subtype table: one row per model, per label (five subtypes, then "any") the AUC with its
95% CI and the number of positive cases, and the RSNA weighted log loss. Numbers arrive computed
(``ichdet.metrics.subtype_metrics``'s entries); this only lays them out."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ichdet.report.render import Table
from ichdet.report.tables import DASH, Column, fmt_ci, fmt_num

LOG_LOSS_HEADER = "RSNA log loss (any ×2)"


def fmt_subtype(entry: Mapping[str, Any] | None) -> str:
    """``"0.812 (0.741–0.883), 12 pos"``; a label without an AUC (one class) ``"—, 0 pos"``."""
    if entry is None:
        return DASH
    n = f", {entry['n_pos']} pos" if entry.get("n_pos") is not None else ""
    return fmt_ci(entry.get("auc"), entry.get("auc_ci")) + n


def subtype_rows(models: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str] | None = None
                 ) -> list[dict[str, Any]]:
    """Rows of `subtype_table` from {name: metrics entry with "subtypes" and "rsna_log_loss"}; models
    without subtypes are left out."""
    rows = []
    for name, m in models.items():
        if not m.get("subtypes"):
            continue
        rows.append({"model": (labels or {}).get(name, m.get("label", name)), "rsna_log_loss": m.get("rsna_log_loss"),
                     **{f"label:{k}": v for k, v in m["subtypes"].items()}})
    return rows


def subtype_table(name: str, rows: Sequence[Mapping[str, Any]], label_names: Sequence[str]) -> Table:
    """A `Table` of `subtype_rows`: model, one column per label (AUC (95% CI), positives), the RSNA log loss;
    `name` gets the cell legend appended."""
    cols = [Column("model", "model")]
    cols += [Column(f"label:{k}", k, lambda row, k=k: fmt_subtype(row.get(f"label:{k}")), whole_row=True)
             for k in label_names]  # whole row: a label no model reports renders "—"
    cols.append(Column("rsna_log_loss", LOG_LOSS_HEADER, lambda v: fmt_num(v, 4)))
    return Table(f"{name}: AUC (95% CI), positive cases", rows, cols)
