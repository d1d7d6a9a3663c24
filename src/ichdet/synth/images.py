"""A 2D image set from a synthetic cohort, laid out like the public ones (PNG folder + labels.csv).

One brain-windowed 8-bit PNG per scan: for a positive scan the slice with the most bleed (by the
slice labels, the middle of the labelled run), for a negative scan a random slice from the middle
third. Like images collected from many sources, each image gets its own canvas size, margins and
grey level outside the head, a table-like bar and burnt-in text, so that a model can only learn
the head (`ichdet cv` crops to it).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ichdet.datasets.manifest import SUBTYPES, read_manifest, read_slice_labels
from ichdet.errors import InputError
from ichdet.fileio import atomic_path, write_text_atomic
from ichdet.io import read_volume
from ichdet.preprocess.windows import BRAIN_WINDOW, window

LABELS_CSV = "labels.csv"


def pick_slice(labels: list[int], positive: bool, rng: np.random.Generator) -> int:
    """Index of the slice to export: middle of the bleed slices, else a middle-third slice."""
    hits = [i for i, v in enumerate(labels) if v == 1]
    if positive and hits:
        return hits[len(hits) // 2]
    n = len(labels)
    return int(rng.integers(n // 3, max(n // 3 + 1, 2 * n // 3)))


def _dress(gray: np.ndarray, rng: np.random.Generator, vary: bool) -> Image.Image:
    """(H, W) uint8 -> an image with source-like differences (size, margins, table, text)."""
    img = Image.fromarray(gray)
    if not vary:
        return img
    side = int(rng.integers(180, 420))
    img = img.resize((side, side), Image.BILINEAR)
    pad = [int(v) for v in rng.integers(0, 60, size=4)]
    canvas = Image.new("L", (side + pad[0] + pad[2], side + pad[1] + pad[3]), int(rng.integers(0, 12)))
    canvas.paste(img, (pad[0], pad[1]))
    draw = ImageDraw.Draw(canvas)
    w, h = canvas.size
    if rng.random() < 0.5:  # the scanner table below the head
        y = int(h - pad[3] - rng.integers(0, 12))
        draw.rectangle([0, y, w, y + 3], fill=int(rng.integers(60, 140)))
    if rng.random() < 0.7:  # burnt-in annotation
        draw.text((4, 4), f"L  {int(rng.integers(1, 99))}", fill=255)
    return canvas.convert("RGB") if rng.random() < 0.5 else canvas


def image_subtypes(label: int, slice_subtypes: dict[str, int], scan_subtypes: dict[str, int]) -> list[str]:
    """The exported image's subtype cells in `SUBTYPES` order: 0 for a negative image; for a positive
    one its slice's subtypes, else the scan's (a one-subtype scan's bleed slices show that subtype),
    else "" (unknown)."""
    if not label:
        return ["0"] * len(SUBTYPES)
    if slice_subtypes:
        return [str(slice_subtypes[k]) if k in slice_subtypes else "" for k in SUBTYPES]
    if sum(scan_subtypes.get(k, 0) for k in SUBTYPES) == 1 and len(scan_subtypes) == len(SUBTYPES):
        return [str(scan_subtypes[k]) for k in SUBTYPES]
    return [""] * len(SUBTYPES)


def export_image_set(manifest: str | Path, out: str | Path, seed: int = 0, vary: bool = True,
                     limit: int | None = None, subtypes: bool = False) -> Path:
    """Write OUT/images/<scan_id>.png + OUT/labels.csv (id,patient,hemorrhage); returns the CSV.
    An image's label is its slice's (a positive scan whose slices carry no bleed label gives 0).
    With `subtypes`, labels.csv also has the five subtype columns: the exported slice's (see
    `image_subtypes`)."""
    manifest = Path(manifest)
    rows = read_manifest(manifest)[:limit]
    labels_path = manifest.parent / "slice_labels.csv"
    if not labels_path.is_file():
        raise InputError("the cohort has no slice_labels.csv to pick bleed slices from", manifest.parent)
    slice_labels = read_slice_labels(labels_path)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "patient", "hemorrhage"] + (list(SUBTYPES) if subtypes else []))
    for i, row in enumerate(rows):
        target = out / "images" / f"{row.scan_id}.png"
        sl = sorted(slice_labels.get(row.scan_id, []), key=lambda s: s.slice_index)
        index = pick_slice([s.label for s in sl], bool(row.label), rng)
        label = int(sl[index].label == 1) if index < len(sl) else int(row.label)  # the exported slice's own label
        dressed_rng = np.random.default_rng([seed, i])
        if not target.is_file():
            vol = read_volume(row.resolved_path(manifest.parent))
            gray = np.round(window(vol.hu[min(index, vol.hu.shape[0] - 1)], BRAIN_WINDOW) * 255).astype(np.uint8)
            with atomic_path(target, suffix=".png") as tmp:
                _dress(gray, dressed_rng, vary).save(tmp, format="PNG")
        cells = image_subtypes(label, sl[index].subtypes if index < len(sl) else {}, row.subtypes) if subtypes else []
        w.writerow([row.scan_id, row.patient_id, label] + cells)
    return write_text_atomic(out / LABELS_CSV, buf.getvalue())
