"""The segmentation loss (``optim.loss: dice_ce``): MONAI's Dice + cross-entropy over six classes.

Slices whose mask gives subtypes (labels 0..5) train on `DiceCELoss` over the softmax of the six
logits: cross-entropy over all pixels plus the soft Dice of the five bleed classes, computed over
the whole batch (``batch=True``: a class absent from one slice does not make that slice's Dice
undefined), plus the soft Dice of "any bleed" (P(any) = 1 - P(background) against mask > 0): a
class absent from the batch scores a Dice loss of about 1 with almost no gradient, which dilutes
the present classes' Dice fivefold; the any-bleed term keeps the bleed-vs-background signal at
full strength. A slice with no bleed counts as known background whatever its mask's kind.

Slices of masks that give only "bleed" (label `UNKNOWN_SUBTYPE`, e.g. CT-ICH) cannot
say which subtype channel is right: they train on bleed vs background alone, the same Dice + CE
on P(any) = 1 - P(background) (log P(any) = logsumexp of the five bleed log-probabilities), so
the subtype channels share the bleed as they like. A batch mixing both is the slice-weighted mean.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss

from ichdet.errors import InputError
from ichdet.io.masks import UNKNOWN_SUBTYPE

N_CLASSES = 6  # background + five subtypes
_DICE_CE = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
_DICE = DiceLoss(include_background=True, batch=True)  # on probabilities already


def _check(logits: torch.Tensor, y: torch.Tensor) -> None:
    if logits.ndim != 4 or logits.shape[1] != N_CLASSES or y.shape != (logits.shape[0], *logits.shape[2:]):
        raise InputError(f"the segmentation loss needs logits (B, {N_CLASSES}, H, W) and labels (B, H, W), "
                         f"got {tuple(logits.shape)} and {tuple(y.shape)}")


def any_dice_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss of P(any bleed) = 1 - P(background) against y > 0 over the batch."""
    p_any = 1.0 - torch.softmax(logits.float(), dim=1)[:, :1]
    return _DICE(p_any, (y > 0).unsqueeze(1).float())


def bleed_only_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Dice + cross-entropy of P(any bleed) against y > 0: logits (B, 6, H, W), y (B, H, W) -> scalar."""
    logp = F.log_softmax(logits.float(), dim=1)
    log_any = torch.logsumexp(logp[:, 1:], dim=1)
    target = y > 0
    ce = -torch.where(target, log_any, logp[:, 0]).mean()
    return ce + any_dice_loss(logits, y)


def seg_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logits (B, 6, H, W), labels int64 (B, H, W) in 0..5 or `UNKNOWN_SUBTYPE` -> scalar: `DiceCELoss`
    + `any_dice_loss` on the slices without unknown-subtype pixels, `bleed_only_loss` on those with
    them, weighted by their slice counts."""
    _check(logits, y)
    unknown = (y == UNKNOWN_SUBTYPE).flatten(1).any(dim=1)
    n = int(unknown.sum())
    if n == 0:
        return _DICE_CE(logits.float(), y.unsqueeze(1)) + any_dice_loss(logits, y)
    if n == len(y):
        return bleed_only_loss(logits, y)
    known = ~unknown
    full = _DICE_CE(logits[known].float(), y[known].unsqueeze(1)) + any_dice_loss(logits[known], y[known])
    return (full * (len(y) - n) + bleed_only_loss(logits[unknown], y[unknown]) * n) / len(y)


def seg_hits(logits: torch.Tensor, y: torch.Tensor) -> int:
    """Slices whose bleed decision is right: some pixel's argmax is a bleed class exactly where
    the mask holds bleed."""
    pred = (logits.argmax(dim=1) > 0).flatten(1).any(dim=1)
    return int((pred == (y > 0).flatten(1).any(dim=1)).sum())


__all__ = ["N_CLASSES", "any_dice_loss", "bleed_only_loss", "seg_hits", "seg_loss"]
