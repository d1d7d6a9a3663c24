"""Grad-CAM heatmaps of the slice classifier: where in a slice the evidence for "bleed" lies.

`gradcam` runs MONAI's `GradCAM` on the network that maps one slice batch to slice logits
(`slice_classifier`), explaining its "bleed" logit (`bleed_logit`: class 1 of a two-class head,
"any" of a multi-label one), `overlay` blends a map on the grey slice in matplotlib's "jet" colours
(`body_overlay`: only inside the body, as every tile is drawn), and `write_heatmaps` writes one
PNG per slice plus a captioned contact sheet.

MONAI's `GradCAM` is used on a private deep copy of that network, because on the module it is
given it registers forward and backward hooks that it never removes, calls `zero_grad()` (clearing
the caller's `.grad`) and accumulates parameter gradients; its default post-processing also flips
the map (max -> 0), so we normalise ourselves (min -> 0, max -> 1).
"""
from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import binary_fill_holes
from torch import nn

from ichdet.engine.scoring import adapt_input
from ichdet.errors import InputError
from ichdet.fileio import atomic_path
from ichdet.models.heads import head_of
from ichdet.models.kinds import get_kind

MIN_TILE = 256  # pixels: slice PNGs smaller than this are enlarged (nearest neighbour)
MAX_COLUMNS = 4  # contact sheet columns
BODY_LEVEL = 0.02  # display intensity above which a pixel is tissue; maps are drawn only inside the body


class _ExpandInput(nn.Module):
    """`net` behind `adapt_input`: one-channel slices (N, 1, S, S) are replicated to (N, 3, S, S)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(adapt_input(self.net, x))


def slice_classifier(model: nn.Module, kind: str) -> tuple[nn.Module, str]:
    """The module mapping slices (N, C', S, S) -> slice logits (N, K), and its Grad-CAM layer's name
    relative to that module.

    Kind "scan" (ScanLSTM): the encoder (a SliceCNN or EfficientNet-Lite0) with its own slice head.
    Every other kind: the model itself; for "alexnet_svm" that is the plain AlexNet, whose softmax
    head stands in for the SVM (not differentiable) that makes the bundle's decisions; a "slice_svm"
    on a frozen backbone carries its linear SVM in that head (`ichdet.engine.stages.carry_svm`), so
    the map explains the SVM itself. A three-channel network is wrapped
    so that one-channel slices are replicated to three (`adapt_input`); its layer name then starts
    with "net.".
    """
    net = get_kind(kind).slice_classifier(model)
    layer = net.gradcam_layer
    if getattr(net, "in_channels", None) == 3:
        return _ExpandInput(net), f"net.{layer}"
    return net, layer


def bleed_logit(model: nn.Module, kind: str) -> int:
    """The slice classifier's logit for "bleed" (what Grad-CAM explains): 1 of a two-class
    softmax head, the last ("any", index 5 of six) of a multi-label head, never an argmax (that
    would explain whichever subtype or "no bleed" happens to score highest)."""
    net = get_kind(kind).slice_classifier(model)
    return int(net.num_classes) - 1 if head_of(net).multilabel else 1


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """(K, 1, S, S) -> (K, 1, S, S), each map scaled min -> 0, max -> 1; a constant map -> 0."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    span = hi - lo
    return torch.where(span > 0, (maps - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(maps))


def gradcam(model: nn.Module, kind: str, slices: torch.Tensor, class_index: int | None = None,
            batch: int = 16) -> np.ndarray:
    """Grad-CAM of logit `class_index` (default `bleed_logit`: 1 = bleed of a two-class head, the
    "any" logit of a multi-label head) on slices (K, C', S, S) -> float32 (K, S, S) in [0, 1].

    Maps are taken at the network's `gradcam_layer`, bilinearly upsampled to S x S and scaled per
    slice to [0, 1] (a map that is 0 everywhere stays 0). Runs on CPU in float32, in eval mode, on a
    deep copy of the slice classifier with its parameters frozen and the input requiring gradients
    (Grad-CAM needs gradients w.r.t. activations only), so `model` - weights, `.grad`, train flag,
    `requires_grad` flags, hooks - is left as it was. Works inside `torch.inference_mode()` too:
    inference mode is switched off for the computation and `slices` is cloned.
    """
    from monai.visualize import GradCAM

    if not isinstance(slices, torch.Tensor) or slices.ndim != 4:
        shape = tuple(slices.shape) if isinstance(slices, torch.Tensor) else type(slices).__name__
        raise InputError(f"gradcam expects slices (K, C, S, S), got shape {shape}")
    net, layer = slice_classifier(model, kind)
    if class_index is None:
        class_index = bleed_logit(model, kind)
    out = []
    with torch.inference_mode(False), torch.enable_grad():
        net = copy.deepcopy(net).to("cpu", torch.float32).eval()
        net.requires_grad_(False)
        cam = GradCAM(nn_module=net, target_layers=layer, postprocessing=_normalise)
        for i in range(0, len(slices), batch):
            x = slices[i:i + batch].detach().to("cpu", torch.float32).clone().requires_grad_(True)
            out.append(cam(x, class_idx=class_index).detach()[:, 0])
    return torch.cat(out).numpy().astype(np.float32, copy=False) if out else np.zeros((0, *slices.shape[2:]), np.float32)


def overlay(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.4, threshold: float = 0.2) -> np.ndarray:
    """Grey slice (S, S) in [0, 1] with `cam` (S, S) in [0, 1] in "jet" colours blended on it
    (weight `alpha`) where cam >= threshold -> uint8 RGB (S, S, 3); elsewhere the plain grey slice."""
    from matplotlib import colormaps

    gray = np.clip(np.nan_to_num(np.asarray(gray, dtype=np.float64)), 0.0, 1.0)
    cam = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float64)), 0.0, 1.0)
    if gray.ndim != 2 or gray.shape != cam.shape:
        raise InputError(f"overlay needs a grey slice and a map of the same (S, S) shape, got {gray.shape} "
                         f"and {cam.shape}")
    rgb = np.repeat(gray[..., None], 3, axis=2)
    hot = cam >= threshold
    rgb[hot] = (1.0 - alpha) * rgb[hot] + alpha * colormaps["jet"](cam[hot])[:, :3]
    return np.round(rgb * 255.0).astype(np.uint8)


def body_overlay(gray: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """`overlay` of `cam` on the grey slice `gray` (both (S, S) in [0, 1]), the map drawn only
    inside the body (the filled region where gray > BODY_LEVEL) -> uint8 RGB (S, S, 3)."""
    gray = np.asarray(gray)
    return overlay(gray, np.asarray(cam) * binary_fill_holes(gray > BODY_LEVEL))


def _save_png(img: Image.Image, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")
    return path


def write_heatmaps(out_dir: Path, image: np.ndarray, cams: dict[int, np.ndarray], slice_probabilities: np.ndarray,
                   title: str, z_labels: Sequence[str] | None = None) -> dict:
    """Write `slice_{z:03d}.png` (or `<z_labels[z]>.png`, numbers zero-padded) for every slice z in
    `cams` (the map over channel 0 of image (C, Z, S, S), drawn only on the body, enlarged by
    nearest neighbour to >= 256 px) and `contact_sheet.png` (those tiles in the order of `cams`,
    at most 4 a row, each captioned "slice z  p=0.93" or "<z_labels[z]>  p=0.93" from
    `slice_probabilities` (Z,), under a `title` line), each atomically.

    Returns {"contact_sheet": path, "slices": {z: path}} (paths as str).
    """
    if not cams:
        raise InputError("write_heatmaps: no Grad-CAM maps to draw (cams is empty)")
    image = np.asarray(image)
    if image.ndim != 4:
        raise InputError(f"write_heatmaps expects an image (C, Z, S, S), got shape {image.shape}")
    n_slices, size = image.shape[1], image.shape[2]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = max(1, math.ceil(MIN_TILE / size))
    font = ImageFont.load_default()
    tiles: list[tuple[Image.Image, str]] = []
    paths: dict[int, str] = {}
    for z in cams:
        if not 0 <= z < n_slices:
            raise InputError(f"write_heatmaps: slice index {z} is outside the scan's {n_slices} slices")
        gray = image[0, z]
        tile = Image.fromarray(body_overlay(gray, cams[z]))
        if scale > 1:
            tile = tile.resize((tile.width * scale, tile.height * scale), Image.Resampling.NEAREST)
        name = z_labels[z] if z_labels is not None else f"slice {z}"
        stem = re.sub(r"\d+", lambda m: f"{int(m.group()):03d}", re.sub(r"[^A-Za-z0-9-]+", "_", name.strip()))
        paths[z] = str(_save_png(tile, out_dir / f"{stem}.png"))
        tiles.append((tile, f"{name}  p={float(slice_probabilities[z]):.2f}"))

    line = font.getbbox("Ag")[3] + 6  # text line height, pixels
    tw, th = tiles[0][0].size
    cols = min(MAX_COLUMNS, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    sheet = Image.new("RGB", (cols * tw, line + rows * (th + line)), "black")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 3), title, fill="white", font=font)
    for i, (tile, caption) in enumerate(tiles):
        x, y = (i % cols) * tw, line + (i // cols) * (th + line)
        draw.text((x + 4, y + 3), caption, fill="white", font=font)
        sheet.paste(tile, (x, y + line))
    sheet_path = _save_png(sheet, out_dir / "contact_sheet.png")
    return {"contact_sheet": str(sheet_path), "slices": paths}
