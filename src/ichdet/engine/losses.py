"""Training losses beyond the two-class cross-entropy of the papers.

`rsna_weighted_bce`: the RSNA 2019 challenge's weighted multi-label log loss on logits, the
training form of `ichdet.metrics.rsna_log_loss` (same weights, same normalisation), for
multi-label subtype heads (five subtypes, then "any").

`slice_head_loss`: the slice stage's loss of a slice head on slices with targets (five subtypes,
then the slice label; -1 unknown), for the scan stage's auxiliary slice loss.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ichdet.errors import InputError
from ichdet.metrics import RSNA_WEIGHTS


def rsna_weighted_bce(logits: torch.Tensor, targets: torch.Tensor,
                      weights: Sequence[float] = RSNA_WEIGHTS) -> torch.Tensor:
    """logits, targets (N, L) -> scalar: mean over cases of sum_j w_j * BCE_j / sum_j w_j.
    Targets of -1 (unknown) are left out of their case's sum and its weight total."""
    w = torch.as_tensor(weights, dtype=torch.float32, device=logits.device)
    if logits.ndim != 2 or logits.shape != targets.shape or logits.shape[1] != w.numel():
        raise InputError(f"rsna_weighted_bce needs logits and targets of shape (N, {w.numel()}), "
                         f"got {tuple(logits.shape)} and {tuple(targets.shape)}")
    known = (targets >= 0).float()
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float().clamp(min=0), reduction="none")
    per_case = (bce * known * w).sum(dim=1) / (known * w).sum(dim=1).clamp(min=1e-12)
    has_any = known.sum(dim=1) > 0
    return per_case[has_any].mean() if bool(has_any.any()) else logits.sum() * 0.0


def slice_head_loss(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool = False,
                    weights: Sequence[float] = RSNA_WEIGHTS) -> torch.Tensor:
    """The slice stage's loss of a slice head on N slices: logits (N, K), targets (N, 6) (five
    subtypes, then the slice label; -1 unknown) -> scalar.

    A two-class head (K = 2): cross-entropy against the slice label, the mean over the slices
    whose label is known. A multi-label head (K = 6): `rsna_weighted_bce` with `weights`. Without
    a known target: 0, still connected to `logits` (its gradient is 0)."""
    if logits.ndim != 2 or targets.ndim != 2 or len(logits) != len(targets):
        raise InputError(f"slice_head_loss needs logits (N, K) and targets (N, 6), got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    if multilabel:
        return rsna_weighted_bce(logits, targets, weights)
    y = targets[:, -1].long()
    known = y >= 0
    if not bool(known.any()):
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float()[known], y[known])
