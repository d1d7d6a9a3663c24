"""Display windows: named HU presets, parsing, and mapping HU to [0, 1] channels."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, TypeVar

import numpy as np
import torch

from ichdet.errors import InputError

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class Window:
    """A display window in HU: values in [center - width/2, center + width/2] map to [0, 1]."""

    center: float
    width: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width) and self.width > 0):
            raise InputError(f"window needs a finite center and a positive width, got {self.center}/{self.width}")


BRAIN_WINDOW = Window(center=40, width=80)  # HU
SUBDURAL_WINDOW = Window(center=80, width=200)  # HU
SOFT_TISSUE_WINDOW = Window(center=40, width=380)  # HU
BONE_WINDOW = Window(center=600, width=2800)  # HU
WINDOWS: dict[str, Window] = {
    "brain": BRAIN_WINDOW, "subdural": SUBDURAL_WINDOW,
    "soft_tissue": SOFT_TISSUE_WINDOW, "bone": BONE_WINDOW,
}


def parse_window(text: str | Window) -> Window:
    """`"brain"`, `"soft-tissue"`, `"40/80"` (center/width, HU) or a `Window` -> `Window`."""
    if isinstance(text, Window):
        return text
    name = str(text).strip().lower().replace("-", "_").replace(" ", "_")
    if name in WINDOWS:
        return WINDOWS[name]
    parts = name.split("/")
    if len(parts) == 2:
        try:
            center, width = float(parts[0]), float(parts[1])
        except ValueError:
            pass
        else:
            return Window(center, width)
    raise InputError(f"unknown window {text!r}: use one of {sorted(WINDOWS)} or 'center/width' in HU, e.g. '40/80'")


def window(hu: ArrayT, w: Window | str) -> ArrayT:
    """Map HU (any shape) to float32 in [0, 1] through window `w`, clipping outside it."""
    w = parse_window(w)
    low = w.center - w.width / 2.0
    if isinstance(hu, torch.Tensor):
        return ((hu.to(torch.float32) - low) / w.width).clamp_(0.0, 1.0)
    out = np.asarray((np.asarray(hu, dtype=np.float32) - np.float32(low)) / np.float32(w.width))
    return np.clip(out, 0.0, 1.0, out=out) if out.ndim else np.clip(out, 0.0, 1.0)


def window_stack(hu: ArrayT, windows: Sequence[Window | str]) -> ArrayT:
    """HU of shape S -> float32 (C, *S), one channel per window, in the order given."""
    if len(windows) == 0:
        raise InputError("window_stack needs at least one window, got none")
    chans = [window(hu, w) for w in windows]
    return torch.stack(chans) if isinstance(hu, torch.Tensor) else np.stack(chans)
