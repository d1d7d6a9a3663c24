"""`segment_volume` with a bare seg_unet: the mask comes back in the volume's own geometry (a
non-square series with a head crop), its labels follow the probabilities, and bad input is refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ichdet.errors import InputError
from ichdet.engine.segment import segment_volume
from ichdet.io.volume import Volume
from ichdet.models.seg_unet import SegUNet
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
