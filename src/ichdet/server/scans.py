"""A scan -> an `OpenStudy`, and a study's slices -> PNG.

`open_scan` (run on the inference worker) reads the scan with the existing readers, predicts it
with the bundle's `Predictor` (a segmentation bundle also gives the label mask and P(bleed) maps on
the prepared grid: the mask overlay and the heatmaps), and prepares the display stacks in the model's geometry: the
predictor's preparation (slabs of the training slice thickness, head crop, maximum filters,
resize) with the preset windows in place of the bundle's, so display slice k is exactly prepared
slice k. One extra channel through a window wide
enough to pass every HU value unclipped gives the HU in that geometry (to 0.01 HU), from which
custom `C/W` windows are cut per slice on request (windowing is the pipeline's last step).

Reader errors name the file; the server's temporary paths in them are replaced by the display
name the client gave, so no server path reaches the client.
"""
from __future__ import annotations

import dataclasses
import io
import re
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from ichdet.errors import InputError
from ichdet.inference.predictor import Predictor
from ichdet.inference.result import ScanPrediction
from ichdet.io import Volume
from ichdet.io.sources import unpacked_zip
from ichdet.preprocess.pipeline import prepare_volume, slice_map
from ichdet.preprocess.windows import WINDOWS, Window, parse_window, window
from ichdet.server.store import OpenStudy

PRESETS = ("brain", "subdural", "bone")
HU_LOW, HU_SPAN = -4096.0, 65536.0  # a window passing -4096..61440 HU unclipped: HU in display geometry
_HU_WINDOW = f"{HU_LOW + HU_SPAN / 2:g}/{HU_SPAN:g}"
_CUSTOM = re.compile(r"^\s*[-+]?\d+(\.\d*)?\s*/\s*\+?\d+(\.\d*)?\s*$")
BAD_WINDOW = "window must be brain, subdural, bone or C/W in HU with a width > 0 (e.g. 40/80), got {!r}"


def hide_paths(text: str, replacements: dict[str, str]) -> str:
    """`text` with each key (a server path) replaced by its value, longest keys first."""
    for path in sorted(replacements, key=len, reverse=True):
        text = text.replace(path, replacements[path])
    return text


def _read(predictor: Predictor, source: Path | list[Path], zipped: bool,
          hide: dict[str, str], name: str) -> tuple:
    try:
        if zipped:
            with unpacked_zip(source) as root:  # refuses absolute paths, '..', links and bombs
                hide = {**hide, str(root): name}
                return predictor.prepare(root)
        return predictor.prepare(source)
    except InputError as e:
        raise InputError(hide_paths(str(e), hide)) from None
    except MemoryError:
        raise InputError(f"{name}: out of memory reading the scan") from None
    except OSError as e:  # the file could not be read; anything else is ours (500), not the upload's
        raise InputError(f"{name}: not a readable scan ({e.__class__.__name__})") from None


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] -> uint8 0..255."""
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def predict_scan(predictor: Predictor, source: Path | list[Path], name: str, zipped: bool = False,
                 hide: dict[str, str] | None = None) -> tuple[Volume, np.ndarray, ScanPrediction]:
    """Read and predict one scan -> (volume, the model's input (C, Z', S, S), prediction named
    `name`); InputError for a bad scan, its message free of the server paths in `hide`."""
    hide = hide or {}
    t0 = time.perf_counter()
    volume, image = _read(predictor, source, zipped, hide, name)
    result = predictor.finish(volume, image, time.perf_counter() - t0, name)
    result.warnings = [hide_paths(w, hide) for w in result.warnings]
    return volume, image, result


def open_scan(predictor: Predictor, source: Path | list[Path], name: str, zipped: bool = False,
              hide: dict[str, str] | None = None, tmp_dir: Path | None = None) -> OpenStudy:
    """`predict_scan`, then the display stacks -> an `OpenStudy` (not yet in a store)."""
    volume, image, result = predict_scan(predictor, source, name, zipped, hide)
    display_units = volume.info.get("units") == "display"
    if display_units:
        result.warnings.append("a PNG/JPEG holds no Hounsfield units: every window shows the image as stored")

    spec = dataclasses.replace(predictor.prep, windows=PRESETS + (_HU_WINDOW,))  # slabs too, as the model saw
    stack = prepare_volume(volume, spec)  # (4, Z', S, S) in [0, 1]
    slices = slice_map(volume, spec)  # display slice k covers source slices slices.sources(k)
    top = list(dict.fromkeys(slices.prepared_of(t["index"]) for t in result.top_slices))
    segmenting = result.prepared_labels is not None  # the mask and P(bleed) maps are on the prepared grid = display
    return OpenStudy(id=uuid.uuid4().hex, name=name, prediction=result, image=image,
                 displays={w: to_uint8(stack[i]) for i, w in enumerate(PRESETS)},
                 hu=None if display_units else stack[len(PRESETS)] * np.float32(HU_SPAN) + np.float32(HU_LOW),
                 slice_probabilities=slices.collect(result.slice_probabilities), slice_labels=slices.labels(),
                 top_slices=top, tmp_dir=tmp_dir, labels=result.prepared_labels if segmenting else None,
                 cams=dict(enumerate(result.prepared_bleed)) if segmenting else {})


def parse_display_window(text: str) -> str | Window:
    """`brain`, `subdural`, `bone` -> that name; `C/W` (HU, width > 0) -> a Window (a preset's
    own values -> its name); anything else -> ValueError with the reason."""
    if text in PRESETS:
        return text
    if not _CUSTOM.match(text):
        raise ValueError(BAD_WINDOW.format(text))
    try:
        w = parse_window(text.replace(" ", ""))
    except InputError:
        raise ValueError(BAD_WINDOW.format(text)) from None
    return next((p for p in PRESETS if WINDOWS[p] == w), w)


def slice_gray(study: OpenStudy, win: str | Window, k: int) -> np.ndarray:
    """Display slice k through `win` -> uint8 (S, S)."""
    if isinstance(win, str):
        return study.displays[win][k]
    if study.hu is None:  # no HU to window: the image as stored
        return study.displays[PRESETS[0]][k]
    return to_uint8(window(study.hu[k], win))


def slice_cams(predictor: Predictor, study: OpenStudy, ks: list[int]) -> dict[int, np.ndarray]:
    """Grad-CAM (S, S) of the model's prepared slices `ks`, one pass (run it on the inference worker)."""
    from ichdet.inference.heatmaps import gradcam

    b = predictor.bundle
    return dict(zip(ks, gradcam(b.model, b.kind, predictor.sequence(study.image)[ks])))


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 (S, S) grey or (S, S, 3) RGB -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()
