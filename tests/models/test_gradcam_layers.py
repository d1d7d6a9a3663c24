"""`gradcam_layer` names work with MONAI's GradCAM (the consumer they exist for)."""
from __future__ import annotations

import pytest
import torch
from monai.visualize import GradCAM

from ichdet.models import AlexNet, SliceCNN


@pytest.mark.parametrize("model,shape", [
    (SliceCNN(base_width=4, n_units=3), (1, 1, 48, 48)),
    (AlexNet(num_classes=2), (1, 3, 96, 96)),
])
def test_gradcam_map(model, shape):
    torch.manual_seed(0)
    cam = GradCAM(nn_module=model, target_layers=model.gradcam_layer)
    out = cam(torch.rand(*shape), class_idx=1)
    assert out.shape == (1, 1, *shape[-2:])
    assert torch.isfinite(out).all()
