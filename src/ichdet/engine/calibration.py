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

EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] before their logit


def platt_fit(y: np.ndarray, p: np.ndarray) -> tuple[float, float] | None:
    """(a, c) of P = sigmoid(a * logit(p) + c) fitted to labels `y` (N,) from probabilities `p` (N,);
    None without both classes. Platt's own fit: the targets are (N+ + 1) / (N+ + 2) for a bleed and
    1 / (N- + 2) for none, so a validation set the network separates perfectly (a few dozen images
    often are) gets a finite slope instead of probabilities of exactly 0 and 1."""
    from sklearn.linear_model import LogisticRegression

    y, p = np.asarray(y, dtype=np.int64), np.asarray(p, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise InputError(f"platt_fit needs labels and probabilities of one shape (N,), got {y.shape} and {p.shape}")
    n_pos, n_neg = int((y == 1).sum()), int((y != 1).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    q = np.clip(p, EPS, 1 - EPS)
    d = np.log(q / (1 - q))
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    # soft targets as weights: each sample once as a bleed (weight t) and once as none (1 - t)
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(
        np.concatenate([d, d])[:, None], np.r_[np.ones_like(y), np.zeros_like(y)], sample_weight=np.r_[t, 1 - t])
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


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
