"""AlexNet: torchvision layout, loading official-layout files, ImageNet normalisation; fine-tuning helpers."""
from __future__ import annotations

import urllib.error

import pytest
import torch
from torch import nn

from ichdet.errors import InputError
from ichdet.models import IMAGENET1K_V1, AlexNet, SliceCNN, load_alexnet_weights, param_groups, set_trainable
from ichdet.models import to_three_channels

OFFICIAL_SHAPES = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}


def official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.01 for k, s in OFFICIAL_SHAPES.items()}


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "alexnet-owt-7be5be79.pth"
    state = official_state()
    torch.save(state, path)
    return path, state


def test_layout_matches_torchvision():
    model = AlexNet(num_classes=1000)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == OFFICIAL_SHAPES
    assert sum(p.numel() for p in model.parameters()) == IMAGENET1K_V1.num_params
    assert [type(m).__name__ for m in model.features] == [
        "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d",
        "Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d"]
    assert [type(m).__name__ for m in model.classifier] == [
        "Dropout", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Linear"]
    assert model.features[0].stride == (4, 4) and model.features[0].padding == (2, 2)
    assert model.avgpool.output_size == (6, 6)
    assert isinstance(model.get_submodule(model.gradcam_layer), nn.Conv2d)


@pytest.mark.parametrize("size", [63, 100, 224])
def test_shapes(size):
    model = AlexNet(num_classes=2).eval()
    x = torch.rand(2, 3, size, size)
    f = model.forward_features(x)
    assert f.shape == (2, 4096)
    assert model.forward_head(f).shape == (2, 2)
    torch.testing.assert_close(model(x), model.forward_head(f))


def test_features_are_penultimate_output():
    torch.manual_seed(0)
    model = AlexNet(num_classes=2).eval()
    x = torch.rand(1, 3, 80, 80)
    ref = model.classifier[:-1](torch.flatten(model.avgpool(model.features(x)), 1))
    torch.testing.assert_close(model.forward_features(x), ref)


def test_load_local_file_drops_imagenet_head(official_file):
    path, state = official_file
    model = AlexNet(num_classes=2)
    fresh_head = model.classifier[6].weight.detach().clone()
    load_alexnet_weights(model, path)
    loaded = model.state_dict()
    for key in OFFICIAL_SHAPES:
        if key.startswith("classifier.6"):
            continue
        assert torch.equal(loaded[key], state[key]), key
    assert torch.equal(model.classifier[6].weight, fresh_head)
    assert model.classifier[6].weight.shape == (2, 4096)
    assert model.normalize and model.config()["normalize"] is True


def test_load_local_file_keeps_head_for_1000_classes(official_file):
    path, state = official_file
    model = load_alexnet_weights(AlexNet(num_classes=1000), str(path))
    assert torch.equal(model.classifier[6].weight, state["classifier.6.weight"])
    assert torch.equal(model.classifier[6].bias, state["classifier.6.bias"])


def test_wrong_shape_names_key(tmp_path):
    state = official_state()
    state["features.3.weight"] = torch.zeros(192, 64, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(InputError, match=r"'features\.3\.weight' has shape \(192, 64, 3, 3\).*\(192, 64, 5, 5\)"):
        load_alexnet_weights(AlexNet(), path)


def test_missing_and_unexpected_keys(tmp_path):
    state = official_state()
    del state["classifier.4.bias"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(InputError, match=r"missing AlexNet key 'classifier\.4\.bias'"):
        load_alexnet_weights(AlexNet(), tmp_path / "missing.pth")
    state = official_state()
    state["fc.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(InputError, match=r"unexpected AlexNet key\(s\) \['fc\.weight'\]"):
        load_alexnet_weights(AlexNet(), tmp_path / "extra.pth")


def test_missing_or_corrupt_file(tmp_path):
    with pytest.raises(InputError, match="not found.*weights='imagenet'"):
        load_alexnet_weights(AlexNet(), tmp_path / "nope.pth")
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="corrupt.pth: not a readable torch state dict"):
        load_alexnet_weights(AlexNet(), bad)


def test_imagenet_uses_torch_hub_with_hash_check(monkeypatch):
    calls = []

    def fake_load(url, **kwargs):
        calls.append((url, kwargs))
        return official_state(1)

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_load)
    model = load_alexnet_weights(AlexNet(num_classes=2), "imagenet", progress=False)
    assert len(calls) == 1
    url, kwargs = calls[0]
    assert url == "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" == IMAGENET1K_V1.url
    assert kwargs["check_hash"] is True and kwargs["map_location"] == "cpu"
    assert IMAGENET1K_V1.file_hash in url
    assert torch.equal(model.features[0].weight, official_state(1)["features.0.weight"])


def test_imagenet_offline_says_how_to_pass_a_file(monkeypatch):
    def offline(url, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(InputError, match=r"weights=PATH"):
        load_alexnet_weights(AlexNet(), "imagenet")


def test_normalisation_buffers():
    model = AlexNet(normalize=True).eval()
    assert model.mean.shape == (1, 3, 1, 1) and model.std.shape == (1, 3, 1, 1)
    torch.testing.assert_close(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    torch.testing.assert_close(model.std.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()
    plain = AlexNet(normalize=False).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(model.forward_features(x), plain.forward_features((x - model.mean) / model.std))
    with pytest.raises(InputError, match="in_channels=1"):
        AlexNet(in_channels=1, normalize=True)


def test_to_three_channels():
    gray = torch.rand(2, 1, 8, 8)
    rgb = to_three_channels(gray)
    assert rgb.shape == (2, 3, 8, 8) and all(torch.equal(rgb[:, c], gray[:, 0]) for c in range(3))
    three = torch.rand(2, 3, 8, 8)
    assert to_three_channels(three) is three
    with pytest.raises(InputError, match=r"got shape \(2, 2, 8, 8\)"):
        to_three_channels(torch.rand(2, 2, 8, 8))


def test_set_trainable_choices():
    model = AlexNet()
    assert set_trainable(model, "last") == ["classifier.6.weight", "classifier.6.bias"]
    assert not model.features[0].weight.requires_grad
    names = set_trainable(model, "classifier")
    assert names == [n for n, _ in model.named_parameters() if n.startswith("classifier.")]
    assert set_trainable(model, ["features.10", "classifier.6"]) == [
        "features.10.weight", "features.10.bias", "classifier.6.weight", "classifier.6.bias"]
    assert len(set_trainable(model, "all")) == 16
    assert set_trainable(SliceCNN(base_width=4), "last") == ["head.linear.weight", "head.linear.bias"]
    with pytest.raises(InputError, match="'feature' matches no parameter.*classifier, features"):
        set_trainable(model, ["feature"])
    with pytest.raises(InputError, match="got 'some'"):
        set_trainable(model, "some")


def test_param_groups_learning_rates():
    model = AlexNet()
    set_trainable(model, "all")
    groups = param_groups(model, 1e-3, {"features": 0.1, "classifier.6": 10.0})
    by_name = {g["name"]: g for g in groups}
    assert by_name["features"]["lr"] == pytest.approx(1e-4)
    assert by_name["classifier.6"]["lr"] == pytest.approx(1e-2)
    assert by_name["default"]["lr"] == pytest.approx(1e-3)
    assert len(by_name["features"]["params"]) == 10 and len(by_name["classifier.6"]["params"]) == 2
    assert len(by_name["default"]["params"]) == 4  # classifier.1 and classifier.4
    torch.optim.SGD(groups, lr=1e-3)  # valid optimizer input
    set_trainable(model, "classifier")
    assert {g["name"] for g in param_groups(model, 1e-3, {"features": 0.1})} == {"default"}
