"""`ScanPrediction`: what `predict` says about one scan, as JSON (design.md schema) and as a table row."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ichdet.metrics import SUBTYPE_LABELS

SUBTYPE_COLUMNS = SUBTYPE_LABELS[:-1]  # the five subtypes; "any" is the scan probability itself


@dataclass
class ScanPrediction:
    """One scan's result.

    probability: the bundle's scan score, P(bleed) for every shipped kind.
    decision: probability >= threshold (the bundle's operating point, chosen on validation data).
    slice_probabilities: one per slice of the input volume, index 0 the most inferior slice. With
        the bundle's 2x2x2 filter, the two slices of each merged pair share their value.
    top_slices: the most suspicious slices, most suspicious first:
        [{"index", "probability", "z_mm", "file"}] ("file" only for DICOM input).
    subtypes: {label: probability} for the five subtypes then "any" (equal to `probability`) when
        the bundle has a multi-label (subtype) head, else None (binary bundles, SVM kinds).
    seconds: read + preprocessing + model, end to end (heatmaps not included).
    slabs: how the series was matched to the bundle's training slice thickness
        (`ichdet.preprocess.SlabPlan.to_dict`: training_mm, series_mm, slices_per_slab, slab_mm,
        n_slices, n_slabs, summary; slices_per_slab 1: kept as they are), or None when the bundle
        records no thickness (older bundles, 2D models) or the input has no slice spacing.
    """

    input: str
    series_uid: str
    probability: float
    threshold: float
    decision: bool
    slice_probabilities: list[float]
    top_slices: list[dict[str, Any]]
    subtypes: dict[str, float] | None = None
    seconds: float = 0.0
    shape: tuple[int, int, int] = (0, 0, 0)
    runtime: str = ""
    warnings: list[str] = field(default_factory=list)
    heatmaps: dict[str, Any] | None = None
    slabs: dict[str, Any] | None = None
    volumes: dict[str, Any] | None = None
    outputs: dict[str, str] | None = None
    prepared_labels: Any = field(default=None, repr=False, compare=False)
    prepared_bleed: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The design's JSON entry (plus shape, runtime, warnings, heatmap paths, slabs, volumes and output files)."""
        return {"input": self.input, "series_uid": self.series_uid, "probability": self.probability,
                "threshold": self.threshold, "decision": self.decision,
                "slice_probabilities": self.slice_probabilities, "top_slices": self.top_slices,
                "subtypes": self.subtypes, "seconds": self.seconds, "shape": list(self.shape),
                "runtime": self.runtime, "warnings": self.warnings, "heatmaps": self.heatmaps, "slabs": self.slabs,
                "volumes": self.volumes, "outputs": self.outputs}


def format_table(predictions: Sequence[ScanPrediction], errors: Sequence[dict[str, str]] = ()) -> str:
    """A plain-text table for the terminal, one row per scan (for a subtype bundle followed by an
    indented line of its subtype probabilities), then a note per series merged into slabs of the training
    thickness, and one line per warning and per failed input."""
    header = ("input", "slices", "P(bleed)", "threshold", "decision", "most suspicious slices", "seconds")
    rows = [header]
    for p in predictions:
        top = ", ".join(f"{a}{'' if a == b else f'-{b}'} ({q:.2f})" for a, b, q in _slice_runs(p.top_slices)[:3])
        rows.append((p.input, str(p.shape[0]), f"{p.probability:.3f}", f"{p.threshold:.3f}",
                     "BLEED" if p.decision else "no bleed", top or "-", f"{p.seconds:.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i in (0, 4, 5) else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for j, p in reversed(list(enumerate(predictions))):
        if p.subtypes:
            lines.insert(j + 3, "  subtypes: " + "  ".join(f"{k} {v:.3f}" for k, v in p.subtypes.items() if k != "any"))
        if p.volumes:
            lines.insert(j + 3, "  " + volume_line(p.volumes))
    lines += [f"note: {p.input}: {p.slabs['summary']}" for p in predictions if p.slabs and p.slabs["slices_per_slab"] > 1]
    lines += [f"warning: {p.input}: {w}" for p in predictions for w in p.warnings]
    lines += [f"error: {e['input']}: {e['error']}" for e in errors]
    return "\n".join(lines)


def volume_line(volumes: dict[str, Any]) -> str:
    """One line of a scan's bleed volumes: total, each subtype present, and the largest lesion's ABC/2."""
    parts = [f"{k} {v:.1f}" for k, v in volumes["subtypes"].items() if v > 0]
    return (f"volume: {volumes['total']:.1f} mL" + (f" ({', '.join(parts)})" if parts else "")
            + f"; ABC/2 of the largest lesion {volumes['abc2']['volume_ml']:.1f} mL")


def _slice_runs(top: Sequence[dict[str, Any]]) -> list[tuple[int, int, float]]:
    """Top-slice entries -> (first, last, probability), merging neighbours that share a value
    (the two slices of a pair the 2x2x2 filter merged)."""
    runs: list[tuple[int, int, float]] = []
    for t in top:
        if runs and t["index"] == runs[-1][1] + 1 and t["probability"] == runs[-1][2]:
            runs[-1] = (runs[-1][0], t["index"], runs[-1][2])
        else:
            runs.append((t["index"], t["index"], t["probability"]))
    return runs


def results_document(predictions: Sequence[ScanPrediction], errors: Sequence[dict[str, str]],
                     model: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `predict --json` document: {"model": ..., "scans": [...], "errors": [{"input", "error"}]}."""
    return {**({"model": model} if model else {}), "scans": [p.to_dict() for p in predictions], "errors": list(errors)}


def write_results(out: Path, document: dict[str, Any]) -> list[Path]:
    """OUT/predictions.json (the --json document) and OUT/predictions.csv (one row per scan, with one
    column per subtype, empty for a bundle without subtypes), atomically."""
    import csv
    import io
    import json

    from ichdet.fileio import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["input", "series_uid", "probability", "threshold", "decision", "top_slices", "n_slices", "seconds",
                "volume_ml", "abc2_ml", *SUBTYPE_COLUMNS, "error"])
    for s in document["scans"]:
        subtypes, volumes = s.get("subtypes") or {}, s.get("volumes")
        w.writerow([s["input"], s["series_uid"], repr(s["probability"]), repr(s["threshold"]), int(s["decision"]),
                    " ".join(str(t["index"]) for t in s["top_slices"]), s["shape"][0], f"{s['seconds']:.3f}",
                    *((repr(volumes["total"]), repr(volumes["abc2"]["volume_ml"])) if volumes else ("", "")),
                    *(repr(subtypes[k]) if k in subtypes else "" for k in SUBTYPE_COLUMNS), ""])
    for e in document["errors"]:
        w.writerow([e["input"], *[""] * (9 + len(SUBTYPE_COLUMNS)), e["error"]])
    return [write_text_atomic(out / "predictions.json", json.dumps(document, indent=2) + "\n"),
            write_text_atomic(out / "predictions.csv", buf.getvalue())]
