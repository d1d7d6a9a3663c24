"""Training losses beyond the two-class cross-entropy of the papers.

`rsna_weighted_bce`: the RSNA 2019 challenge's weighted multi-label log loss on logits, the
training form of `ichdet.metrics.rsna_log_loss` (same weights, same normalisation), for
multi-label subtype heads (five subtypes, then "any").
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
