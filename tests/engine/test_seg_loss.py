"""The segmentation loss: MONAI's DiceCE over six classes plus the Dice of P(any), and for masks
without subtypes (CT-ICH) a loss on P(any) alone that does not care which subtype channel holds
the bleed."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from ichdet.engine.seg_loss import bleed_only_loss, seg_hits, seg_loss
from ichdet.engine.tasks import loss_and_hits
from ichdet.errors import InputError
from ichdet.io.masks import UNKNOWN_SUBTYPE


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 6, 8, 8, generator=g)
    y = torch.zeros(4, 8, 8, dtype=torch.int64)
    y[0, 2:5, 2:5] = 2
    y[1, 0:3, 4:8] = 5
    y[1, 6:8, 0:2] = 1
    return logits, y


def test_subtype_masks_train_on_dice_ce_plus_any_dice():
    logits, y = _batch()
    p_any = 1 - logits.softmax(1)[:, 0]
    t = (y > 0).float()
    any_dice = 1 - (2 * (p_any * t).sum() + 1e-5) / (p_any.sum() + t.sum() + 1e-5)
    dice_ce = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)(logits, y[:, None])
    assert seg_loss(logits, y).item() == pytest.approx((dice_ce + any_dice).item(), rel=1e-6)
    value, hits = loss_and_hits(logits, y, "dice_ce")
    assert value.item() == pytest.approx(seg_loss(logits, y).item()) and hits == seg_hits(logits, y)


def test_bleed_only_masks_ignore_the_subtype_split():
    logits, y = _batch()
    y_any = torch.where(y > 0, UNKNOWN_SUBTYPE, 0)
    loss = bleed_only_loss(logits, y_any)
    # the cross-entropy part by hand: -log P(any) on bleed, -log P(background) elsewhere
    p = logits.softmax(1)
    ce = -torch.where(y_any > 0, (1 - p[:, 0]).log(), p[:, 0].log()).mean()
    p_any, t = 1 - p[:, 0], (y_any > 0).float()
    dice = 1 - (2 * (p_any * t).sum() + 1e-5) / (p_any.sum() + t.sum() + 1e-5)
    assert loss.item() == pytest.approx((ce + dice).item(), rel=1e-5)
    # moving probability between subtype channels (same P(background)) changes nothing
    swapped = logits[:, [0, 5, 4, 3, 2, 1]]
    assert bleed_only_loss(swapped, y_any).item() == pytest.approx(loss.item(), rel=1e-6)
    assert seg_loss(logits[:2], y_any[:2]).item() == pytest.approx(bleed_only_loss(logits[:2], y_any[:2]).item())
    # slices 2 and 3 hold no bleed: known background, so they train on all six classes
    assert seg_loss(logits, y_any).item() != pytest.approx(loss.item(), rel=1e-3)
    assert seg_loss(swapped, y).item() != pytest.approx(seg_loss(logits, y).item(), rel=1e-3)


def test_a_mixed_batch_is_the_slice_weighted_mean():
    logits, y = _batch()
    mixed = y.clone()
    mixed[2:] = torch.where(y[2:] > 0, UNKNOWN_SUBTYPE, 0)
    mixed[2, 1:4, 1:4] = UNKNOWN_SUBTYPE
    mixed[3, 5:7, 5:7] = UNKNOWN_SUBTYPE
    full = seg_loss(logits[:2], mixed[:2])
    bleed = bleed_only_loss(logits[2:], mixed[2:])
    assert seg_loss(logits, mixed).item() == pytest.approx(((2 * full + 2 * bleed) / 4).item(), rel=1e-6)
    assert math.isfinite(seg_loss(logits, mixed).item())


def test_hits_and_shapes():
    y = torch.zeros(2, 4, 4, dtype=torch.int64)
    y[0, 1, 1] = 3
    logits = torch.zeros(2, 6, 4, 4)
    logits[:, 0] = 5.0  # background everywhere
    assert seg_hits(logits, y) == 1  # slice 1 right (no bleed), slice 0 missed
    logits[0, 3, 1, 1] = 10.0
    assert seg_hits(logits, y) == 2
    with pytest.raises(InputError) as e:
        seg_loss(torch.zeros(2, 2, 4, 4), y)
    assert str(e.value) == ("the segmentation loss needs logits (B, 6, H, W) and labels (B, H, W), "
                            "got (2, 2, 4, 4) and (2, 4, 4)")
