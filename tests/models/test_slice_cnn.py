"""SliceCNN: the paper's layer structure, shapes, parameter count, channels_last."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ichdet.errors import InputError
from ichdet.models import SliceCNN


def test_paper_structure():
    model = SliceCNN()  # paper defaults: base 16, 5 units, 512 features
    convs = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 11  # 5 units x 2 + 1
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64, 128, 128, 256, 256, 512]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    pools = [m for m in model.features.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 5 and all(p.kernel_size == 2 and p.stride == 2 for p in pools)
    assert isinstance(model.features.unit6.pool, nn.AdaptiveMaxPool2d)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(512, 512), (512, 512), (512, 2)]
    # dropout 0.5 right before the first dense layer and before the head, nowhere else
    assert [type(m).__name__ for m in model.fc] == ["Dropout", "Linear", "ReLU", "Linear", "ReLU"]
    assert [type(m).__name__ for m in model.head] == ["Dropout", "Linear"]
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 2 and all(d.p == 0.5 for d in drops)
    assert model.gradcam_layer == "features.unit5.conv2"
    assert isinstance(model.get_submodule(model.gradcam_layer), nn.Conv2d)


def test_parameter_count_by_hand():
    model = SliceCNN(in_channels=1, base_width=2, n_units=2, feature_dim=8, num_classes=2)
    conv = lambda cin, cout: cout * cin * 9 + cout  # noqa: E731
    dense = lambda fin, fout: fout * fin + fout  # noqa: E731
    expected = conv(1, 2) + conv(2, 2) + conv(2, 4) + conv(4, 4) + conv(4, 8) + dense(8, 8) + dense(8, 8) + dense(8, 2)
    assert expected == 740
    assert sum(p.numel() for p in model.parameters()) == 740


@pytest.mark.parametrize("channels,size", [(1, 64), (3, 64), (2, 97), (1, 32)])
def test_shapes_for_sizes_and_channels(channels, size):
    model = SliceCNN(in_channels=channels, base_width=4, feature_dim=32, num_classes=3).eval()
    x = torch.rand(2, channels, size, size + 8)
    assert model.forward_features(x).shape == (2, 32)
    assert model(x).shape == (2, 3)
    assert model.feature_dim == 32 and model.num_classes == 3 and model.in_channels == channels


def test_features_are_nonnegative_and_deterministic_in_eval():
    torch.manual_seed(0)
    model = SliceCNN(base_width=4).eval()
    x = torch.rand(3, 1, 64, 64)
    f = model.forward_features(x)
    assert (f >= 0).all()
    torch.testing.assert_close(f, model.forward_features(x))


def test_channels_last_gives_same_output():
    torch.manual_seed(0)
    model = SliceCNN(in_channels=3, base_width=4).eval()
    x = torch.rand(2, 3, 64, 64)
    ref = model(x)
    out = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_kaiming_init_and_zero_bias():
    torch.manual_seed(0)
    model = SliceCNN()
    conv = model.features.unit5.conv2  # 256 -> 256, fan_out = 256 * 9
    assert torch.all(conv.bias == 0)
    assert conv.weight.std().item() == pytest.approx((2.0 / (256 * 9)) ** 0.5, rel=0.05)


def test_max_width_caps_filters():
    model = SliceCNN(base_width=16, max_width=64)
    convs = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64, 64, 64, 64, 64, 64]
    assert model.fc.fc1.in_features == 64


@pytest.mark.parametrize("shape", [(2, 2, 64, 64), (2, 1, 16, 64), (1, 64, 64)])
def test_bad_input_names_shape(shape):
    model = SliceCNN(base_width=4)
    with pytest.raises(InputError, match=r"got shape \(" + ", ".join(map(str, shape))):
        model(torch.rand(*shape))


def test_bad_argument():
    with pytest.raises(InputError, match="dropout"):
        SliceCNN(dropout=1.5)
