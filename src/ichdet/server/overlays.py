"""The viewer's segmentation overlay: a label mask drawn over a grey slice, one colour per subtype.

Colours are from Sasha Trubetskoy's 20 distinct colours, chosen to stay apart for the common
colour-vision deficiencies and to read on a grey CT slice.
"""
from __future__ import annotations

import numpy as np

from ichdet.datasets.manifest import SUBTYPES

SUBTYPE_COLOURS: dict[str, tuple[int, int, int]] = dict(zip(SUBTYPES, (
    (245, 130, 48),   # epidural: orange
    (230, 25, 75),    # intraparenchymal: red
    (67, 99, 216),    # intraventricular: blue
    (255, 225, 25),   # subarachnoid: yellow
    (60, 180, 75),    # subdural: green
)))
MASK_ALPHA = 0.45  # opacity of the fill; the outline is drawn opaque
BAD_LABELS = "mask must be 'all' or labels from 1..5 separated by commas (1 = epidural ... 5 = subdural), got {!r}"


def parse_labels(text: str) -> set[int]:
    """The `mask` query value: "all" -> {1..5}; "1,3" -> {1, 3}; "" -> {} (no overlay); anything
    else -> ValueError with the reason."""
    text = text.strip()
    if text in ("", "none"):
        return set()
    if text == "all":
        return set(range(1, len(SUBTYPES) + 1))
    try:
        labels = {int(t) for t in text.split(",")}
    except ValueError:
        raise ValueError(BAD_LABELS.format(text)) from None
    if not labels or not labels <= set(range(1, len(SUBTYPES) + 1)):
        raise ValueError(BAD_LABELS.format(text))
    return labels


def _outline(region: np.ndarray) -> np.ndarray:
    """bool (S, S): the pixels of `region` with a 4-neighbour outside it."""
    padded = np.pad(region, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~inner


def mask_overlay(base: np.ndarray, labels: np.ndarray, show: set[int]) -> np.ndarray:
    """uint8 grey (S, S) or RGB (S, S, 3) slice + uint8 labels (S, S) -> uint8 RGB (S, S, 3): each
    label in `show` filled in its colour at MASK_ALPHA and outlined."""
    if base.shape[:2] != labels.shape:
        raise ValueError(f"mask_overlay: slice {base.shape[:2]} and labels {labels.shape} differ in shape")
    rgb = (np.repeat(base[..., None], 3, axis=2) if base.ndim == 2 else base).astype(np.float32)
    for label in sorted(show):
        region = labels == label
        if not region.any():
            continue
        colour = np.asarray(SUBTYPE_COLOURS[SUBTYPES[label - 1]], np.float32)
        rgb[region] = (1.0 - MASK_ALPHA) * rgb[region] + MASK_ALPHA * colour
        rgb[_outline(region)] = colour
    return np.round(rgb).astype(np.uint8)
