"""`fold_batchnorm`: every batch norm that follows a convolution in seg_unet (EfficientNet-Lite0's
blocks and MONAI's decoder) and EfficientNet-Lite0 is folded, the outputs stay the same, and what
does not follow a convolution is left alone."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ichdet.errors import InputError
from ichdet.models import EfficientNetLite0
from ichdet.models.fusion import fold_batchnorm
from ichdet.models.seg_unet import SegUNet


def _random_statistics(model: nn.Module) -> nn.Module:
    """Batch norms with running statistics and affine parameters far from the identity's."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def _batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("make, shape, expected", [
    (lambda: SegUNet(decoder_channels=[32, 16, 16, 8, 8]), (2, 3, 96, 80), 16 * 3 - 1 + 1 + 10),
    (lambda: EfficientNetLite0(num_classes=3), (2, 3, 64, 72), 16 * 3 - 1 + 2),
])
def test_every_batch_norm_is_folded_and_outputs_stay(make, shape, expected):
    torch.manual_seed(0)
    model = _random_statistics(make())
    before = _batch_norms(model)
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) == expected == before  # blocks (block 0 has no expansion), stem(s), decoder
    assert _batch_norms(folded) == 0 and _batch_norms(model) == before  # the original is untouched
    x = torch.rand(*shape)
    with torch.inference_mode():
        a, b = model(x), folded(x)
    assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


def test_only_a_batch_norm_after_a_convolution_is_folded():
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4)).eval()
    assert fold_batchnorm(net) == 1
    assert isinstance(net[1], nn.Identity) and isinstance(net[3], nn.BatchNorm2d) and net[0].bias is not None
    with pytest.raises(InputError, match=r"^fold_batchnorm needs a model in eval mode \(call \.eval\(\) first\)$"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)))
