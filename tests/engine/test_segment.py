"""`segment_volume` with a bare seg_unet: the mask comes back in the volume's own geometry (a
non-square series with a head crop), its labels follow the probabilities, and bad input is refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ichdet.errors import InputError
from ichdet.engine.segment import segment_volume
from ichdet.io.volume import Volume
from ichdet.models.seg_unet import SegUNet, segment_slices
from ichdet.preprocess import PrepSpec
from ichdet.preprocess.masks import crop_box, restore_mask

SPEC = PrepSpec(windows=("brain", "subdural", "bone"), size=64, max_filter=2, crop_head=True)


def _volume() -> Volume:
    hu = np.full((6, 90, 120), -1000.0, np.float32)
    hu[:, 10:80, 15:105] = 35.0
    hu[2:4, 30:45, 40:60] = 75.0
    return Volume(hu=hu, spacing=(5.0, 0.9, 0.9), affine=np.diag([0.9, 0.9, 5.0, 1.0]))


def test_mask_in_the_original_geometry():
    torch.manual_seed(0)
    model = SegUNet(decoder_channels=[16, 16, 8, 8, 8])
    vol = _volume()
    res = segment_volume(model, vol, batch=4, spec=SPEC)
    assert res.mask.shape == (6, 90, 120) and res.mask.dtype == np.uint8
    assert res.probabilities.shape == (6, 6, 64, 64) and res.threshold is None and res.decision is None
    expected = restore_mask(res.probabilities, vol.shape, SPEC, crop_box(vol.hu, vol.spacing, SPEC))
    assert np.array_equal(res.mask, expected)
    r0, r1, c0, c1 = crop_box(vol.hu, vol.spacing, SPEC)
    outside = np.ones(vol.shape, bool)
    outside[:, r0:r1, c0:c1] = False
    assert not res.mask[outside].any()  # off the head's box: background
    assert 0 <= res.scan_probability <= 1 and res.slice_probabilities.shape == (6,)


def test_bad_input():
    model = SegUNet(decoder_channels=[16, 16, 8, 8, 8])
    with pytest.raises(InputError, match=r"segment_volume with a bare model needs its PrepSpec \(spec=...\)"):
        segment_volume(model, _volume())
    with pytest.raises(InputError, match="segment_volume needs a seg_unet model or a segmentation bundle, got Linear"):
        segment_volume(torch.nn.Linear(2, 2), _volume(), spec=SPEC)
    with pytest.raises(InputError, match="segmentation keeps every slice"):
        segment_volume(model, _volume(), spec=PrepSpec(windows=("brain", "subdural", "bone"), z_max_filter=True))


def _radius() -> np.ndarray:
    yy, xx = np.mgrid[:96, :96]
    return np.hypot(yy - 48, xx - 48)


def _head_with_neck() -> Volume:
    """8 slices of 96 x 96 at 0.9 mm: on slices 3-7 brain (r < 34 px) in a skull ring (34-40) under
    scalp (40-45); slices 0-2 soft tissue without a ring (the neck). An intracranial bleed can lie in
    neither the neck nor the scalp."""
    r = _radius()
    hu = np.full((8, 96, 96), -1000.0, np.float32)
    hu[:, r < 45] = 40.0
    for k in range(3, 8):
        hu[k, (r >= 34) & (r < 40)] = 1200.0
    return Volume(hu=hu, spacing=(5.0, 0.9, 0.9), affine=np.diag([0.9, 0.9, 5.0, 1.0]))


def test_bleed_lies_inside_the_cranial_cavity_only():
    """A network that calls every pixel intraparenchymal: its mask covers the brain of the cranial
    slices and neither the scalp nor the neck, and the scan's slice scores on the neck are 0."""
    from ichdet.preprocess import cranial_slices

    torch.manual_seed(0)
    model = SegUNet(decoder_channels=[16, 16, 8, 8, 8])
    conv = [m for m in model.segmentation_head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([0.0, 0.0, 10.0, 0.0, 0.0, 0.0]))
    vol = _head_with_neck()
    assert cranial_slices(vol.hu, vol.spacing).tolist() == [False] * 3 + [True] * 5
    spec = PrepSpec(windows=("brain", "subdural", "bone"), size=64, max_filter=1)
    res = segment_volume(model, vol, spec=spec)
    r = _radius()
    assert not res.mask[:3].any() and (res.mask[3:, r < 34] == 2).all()  # all the brain, none of the neck
    assert not res.mask[3:, r >= 37.5].any()  # nor the scalp, nor more than ~2 mm of the skull
    assert set(np.unique(res.mask).tolist()) == {0, 2}
    assert res.slice_probabilities[:3].tolist() == [0.0] * 3 and (res.slice_probabilities[3:] > 0.99).all()
    assert (res.probabilities[0, :3] == 1).all() and (res.probabilities[1:, :3] == 0).all()
    assert (res.probabilities[0, 3:, :4] == 1).all()  # the prepared grid's corners: off the head


def test_background_outside():
    from ichdet.engine.segment import background_outside

    p = torch.softmax(torch.rand(6, 2, 4, 4), 0)
    inside = np.zeros((2, 4, 4), bool)
    inside[:, 1:3, 1:3] = True
    out = background_outside(p, inside)
    assert torch.equal(out[:, torch.from_numpy(inside)], p[:, torch.from_numpy(inside)])
    assert (out[0][torch.from_numpy(~inside)] == 1).all() and (out[1:][:, torch.from_numpy(~inside)] == 0).all()
    assert background_outside(p, np.ones((2, 4, 4), bool)) is p
    with pytest.raises(InputError, match=r"^the cavity mask must be \(2, 4, 4\) like the probabilities, got \(2, 4\)$"):
        background_outside(p, np.ones((2, 4), bool))


def test_the_network_runs_on_cranial_slices_only():
    """`segment_intracranial` feeds the network the cranial slices alone and gives what running
    every slice and then setting the others to background gives."""
    from ichdet.engine.segment import segment_intracranial

    torch.manual_seed(0)
    model = SegUNet(decoder_channels=[16, 16, 8, 8, 8]).eval()
    image = torch.rand(3, 5, 64, 64).numpy()
    cranial = np.array([False, True, True, False, True])
    seen = []

    def run(im):
        seen.append(im.shape[1])
        return segment_slices(model, im, batch=2)

    probs = segment_intracranial(run, image, cranial)
    assert seen == [3] and probs.shape == (6, 5, 64, 64)
    full = segment_slices(model, image, batch=2)
    assert torch.allclose(probs[:, cranial], full[:, cranial], atol=1e-5)
    assert (probs[0, ~cranial] == 1).all() and (probs[1:, ~cranial] == 0).all()
    for flags in (np.zeros(5, bool), np.ones(5, bool)):  # none found, or all: every slice runs
        seen.clear()
        assert torch.allclose(segment_intracranial(run, image, flags), full, atol=1e-5) and seen == [5]
    with pytest.raises(InputError, match=r"^cranial flags must be one per slice \(5\), got shape \(3,\)$"):
        segment_intracranial(run, image, np.ones(3, bool))
