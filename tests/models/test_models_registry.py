"""Registry: names, create_model round trips, clear errors."""
from __future__ import annotations

import pytest
import torch

from ichdet.errors import InputError
from ichdet.models import AlexNet, ScanLSTM, SliceCNN, create_model, list_models

SMALL = {
    "slice_cnn": dict(in_channels=2, base_width=4, n_units=3, feature_dim=16, num_classes=3),
    "alexnet": dict(num_classes=2, normalize=True),
    "efficientnet_lite0": dict(num_classes=3, dropout=0.1, multilabel=True),
    "scan_lstm": dict(encoder_kw=dict(base_width=4, n_units=2, feature_dim=8), hidden=6, lstm_layers=1),
}


def test_list_models():
    assert list_models() == ["alexnet", "efficientnet_lite0", "scan_lstm", "seg_unet", "slice_cnn"]


def test_model_name_attributes():
    assert (SliceCNN.model_name, AlexNet.model_name, ScanLSTM.model_name) == ("slice_cnn", "alexnet", "scan_lstm")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_config_round_trip(name):
    model = create_model(name, **SMALL[name])
    assert model.model_name == name
    again = create_model(name, **model.config())
    assert again.config() == model.config()
    a, b = model.state_dict(), again.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    for attr in ("feature_dim", "num_classes", "in_channels", "gradcam_layer"):
        assert getattr(again, attr) == getattr(model, attr)
    assert again.gradcam_layer in dict(again.named_modules())


def test_unknown_name_lists_known():
    with pytest.raises(InputError, match=r"unknown model 'resnet'.*alexnet, efficientnet_lite0, scan_lstm, seg_unet, slice_cnn"):
        create_model("resnet")


def test_bad_keyword_is_input_error():
    with pytest.raises(InputError, match=r"slice_cnn.*widht"):
        create_model("slice_cnn", widht=3)


def test_forward_equals_head_of_features():
    torch.manual_seed(0)
    model = create_model("slice_cnn", **SMALL["slice_cnn"]).eval()
    x = torch.rand(2, 2, 40, 40)
    torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)))
