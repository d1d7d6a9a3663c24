"""What the readers see in an input: the data behind `ichdet info`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ichdet.io import read_volume


def describe_input(path: str | Path, series_uid: str | None = None) -> dict[str, Any]:
    """Read `path` and summarise it: series found/picked, shape, spacing, orientation, tilt, HU, gaps."""
    vol = read_volume(path, series_uid=series_uid)
    info = dict(vol.info)
    d = vol.describe()
    d["input"] = str(path)
    d["format"] = info.get("format", "")
    d["orientation"] = "".join(nib.aff2axcodes(vol.affine_ras()))
    d["series_description"] = info.get("series_description", "")
    d["series_found"] = info.get("series_found", [])
    d["gantry_tilt_tag_deg"] = info.get("gantry_tilt_tag_deg")
    d["gaps"] = info.get("gaps", [])
    d["duplicates_dropped"] = info.get("duplicates_dropped", 0)
    d["transfer_syntax"] = info.get("transfer_syntax", "")
    d["units"] = info.get("units", "HU")
    d["hu_percentiles"] = {str(q): float(v) for q, v in zip((1, 50, 99), np.percentile(vol.hu, (1, 50, 99)))}
    d["warnings"] = info.get("warnings", [])
    return d


def format_description(d: dict[str, Any]) -> str:
    """The human-readable form of `describe_input`'s dict."""
    lines = [f"input:        {d['input']} ({d['format']})"]
    if d["series_found"]:
        lines.append(f"series found: {len(d['series_found'])}")
        for s in d["series_found"]:
            mark = "*" if s["series_uid"] == d["series_uid"] else " "
            lines.append(f"  {mark} {s['series_uid']}  {s['n_files']} file(s)  {s['modality']}  '{s['description']}'"
                         f"{'' if s['axial'] else '  (not axial)'}{'  <- picked' if mark == '*' else ''}")
    z, h, w = d["shape"]
    sz, sy, sx = d["spacing_mm"]
    lines += [
        f"shape:        {z} x {h} x {w} (slices x rows x columns)",
        f"spacing:      {sz} mm between slices, {sy} x {sx} mm pixels",
        f"orientation:  {d['orientation']} (RAS axis codes of columns, rows, slices); slices inferior -> superior",
        f"gantry tilt:  {d['gantry_tilt_deg']:.2f} deg" + (f" (header says {d['gantry_tilt_tag_deg']})" if d["gantry_tilt_tag_deg"] is not None else ""),
        f"{'HU' if d['units'] == 'HU' else 'values'} range:     {d['hu_min']:.0f} .. {d['hu_max']:.0f}" if d["units"] == "HU"
        else f"values:       {d['hu_min']:.3f} .. {d['hu_max']:.3f} (display intensities, not HU)",
        f"patient:      {d['patient_id'] or '-'}   study: {d['study_uid'] or '-'}",
    ]
    if d["transfer_syntax"]:
        lines.append(f"transfer syntax: {d['transfer_syntax']}")
    gaps = d["gaps"]
    lines.append(f"gaps:         {len(gaps)}" + (": " + ", ".join(f"{g['step_mm']} mm after slice {g['after_slice']}" for g in gaps) if gaps else ""))
    if d["duplicates_dropped"]:
        lines.append(f"duplicates:   {d['duplicates_dropped']} dropped")
    for wmsg in d["warnings"]:
        lines.append(f"warning:      {wmsg}")
    return "\n".join(lines)
