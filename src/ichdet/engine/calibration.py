"""Platt scaling of a two-class network on its validation samples, written into its last layer.

A network trained on a few hundred images ranks them well long before its probabilities mean
anything: the CNN from scratch ends `ichdet cv`'s folds at training loss about 0.69, every score
within a few hundredths of 0.5, each fold's model around its own offset. One fold's scores then
cannot be compared with another's, and the pooled out-of-fold AUC falls well below the folds'
own. Platt scaling (Platt 1999) fits P(bleed) = sigmoid(a * d + c) on the validation samples,
d = the logit difference z1 - z0, and writes it into the last layer: W <- a W, b <- a b, then
b1 += c. The network itself then gives the calibrated probability (`predict`, ONNX, Grad-CAM
all unchanged), and with a > 0 its ranking of samples is the same as before.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ichdet.errors import InputError
from ichdet.models.platt import fit_platt

EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] before their logit


def platt_fit(y: np.ndarray, p: np.ndarray) -> tuple[float, float] | None:
    """(a, c) of P = sigmoid(a * logit(p) + c) fitted to labels `y` (N,) from probabilities `p` (N,);
    None without both classes (`ichdet.models.platt.fit_platt`: Platt's targets, so a validation
    set the network separates perfectly gets a finite slope)."""
    y, p = np.asarray(y, dtype=np.int64), np.asarray(p, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise InputError(f"platt_fit needs labels and probabilities of one shape (N,), got {y.shape} and {p.shape}")
    q = np.clip(p, EPS, 1 - EPS)
    return fit_platt(y, np.log(q / (1 - q)))


def calibrate_last_layer(model: torch.nn.Module, y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """Fit Platt scaling to validation labels `y` and the model's P(bleed) `p`, and write it into
    `model.last_layer` (a Linear with 2 outputs, softmax). Returns what was done, for bundle.json:
    {"method": "platt", "a", "c", "samples"}, or {"method": "none", "reason"} when the fit would
    not keep the ranking (a <= 0) or the labels hold one class."""
    layer = model.get_submodule(model.last_layer)
    if not isinstance(layer, torch.nn.Linear) or layer.out_features != 2 or layer.bias is None:
        raise InputError(f"calibration needs a two-class last layer with a bias, got {layer}")
    fit = platt_fit(y, p)
    if fit is None:
        return {"method": "none", "reason": "the validation samples hold one class"}
    a, c = fit
    if not a > 0:
        return {"method": "none", "reason": f"the fit would reverse the ranking (a = {a:.4g})"}
    with torch.no_grad():
        layer.weight.mul_(a)
        layer.bias.mul_(a)
        layer.bias[1] += c
    return {"method": "platt", "a": a, "c": c, "samples": int(len(y))}


__all__ = ["calibrate_last_layer", "platt_fit"]
