"""AlexNet with torchvision's exact layer names, so the official ImageNet file loads as is.

The pretrained weights are data (`Weights`: URL, hash, preprocessing, reference metrics), in the
style of torchvision's `_api.py`. `load_alexnet_weights` fetches them with
`torch.hub.load_state_dict_from_url` (hash-checked, cached in the torch hub folder) or reads a
local file; when `num_classes != 1000` the ImageNet classifier (`classifier.6`) is left out and
stays freshly initialised. Inputs are windowed CT in [0, 1]; `to_three_channels` turns grayscale
into the three planes AlexNet expects, and with `normalize=True` (set when ImageNet weights are
loaded) the model applies the ImageNet mean/std itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ichdet.errors import InputError
from ichdet.models.checks import check_feature_batch, check_image_batch
from ichdet.models.registry import register_model
from ichdet.models.weights import read_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, of [0, 1] pixel values
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Weights:
    """A pretrained weight file and what travels with it (torchvision `_api.Weights` style)."""

    url: str
    file_hash: str  # sha256 prefix, also in the file name: what torch.hub's check_hash verifies
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    input_size: int = 224  # pixels, after resize 256 + centre crop
    min_size: int = 63  # pixels
    num_params: int = 61_100_840
    acc1: float = 56.522  # ImageNet-1K top-1 %, torchvision's reference
    acc5: float = 79.066


IMAGENET1K_V1 = Weights(url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", file_hash="7be5be79")
WEIGHTS: dict[str, Weights] = {"imagenet": IMAGENET1K_V1, "imagenet1k_v1": IMAGENET1K_V1}


def to_three_channels(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 3, H, W): one channel is replicated, three are kept, anything else is an error."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"to_three_channels expects (B, C, H, W), got shape {shape}")
    if x.shape[1] == 3:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    raise InputError(f"to_three_channels needs 1 or 3 channels, got shape {tuple(x.shape)}")


@register_model("alexnet")
class AlexNet(nn.Module):
    """AlexNet (torchvision layout): x (B, 3, H>=63, W>=63) -> features (B, 4096) -> logits (B, num_classes)."""

    model_name = "alexnet"
    classifier_prefixes = ("classifier",)
    last_layer = "classifier.6"

    def __init__(self, num_classes: int = 2, in_channels: int = 3, dropout: float = 0.5, normalize: bool = False,
                 multilabel: bool = False):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise InputError(f"AlexNet num_classes must be a positive integer, got {num_classes!r}")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise InputError(f"AlexNet in_channels must be a positive integer, got {in_channels!r}")
        if normalize and in_channels != 3:
            raise InputError(f"AlexNet ImageNet normalisation needs in_channels=3, got in_channels={in_channels}")
        self.num_classes, self.in_channels, self.dropout, self.normalize = num_classes, in_channels, dropout, normalize
        self.multilabel = bool(multilabel)  # logits read one sigmoid each (subtypes, "any" last)
        self.feature_dim = 4096
        self.gradcam_layer = "features.10"
        # ReLUs are not in place: Grad-CAM's backward hooks need the conv outputs intact (no weights change)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
            nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(),
            nn.Linear(4096, num_classes),
        )
        # constants, not weights: kept out of the state dict so it matches torchvision's keys
        self.register_buffer("mean", torch.tensor(IMAGENET1K_V1.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET1K_V1.std).view(1, 3, 1, 1), persistent=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) in [0, 1] -> penultimate features (B, 4096) (output of classifier[:-1])."""
        check_image_batch(x, self.in_channels, IMAGENET1K_V1.min_size, "AlexNet")
        if self.normalize:
            x = (x - self.mean) / self.std
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        for layer in self.classifier[:-1]:
            x = layer(x)
        return x

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """Features (B, 4096) -> logits (B, num_classes) (classifier[-1])."""
        check_feature_batch(f, self.feature_dim, "AlexNet head")
        return self.classifier[-1](f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def config(self) -> dict:
        """Keyword arguments that rebuild this model with `create_model("alexnet", **config)`."""
        return {"num_classes": self.num_classes, "in_channels": self.in_channels, "dropout": self.dropout,
                "normalize": self.normalize, "multilabel": self.multilabel}

    def load_pretrained(self, weights: str | Path = "imagenet") -> "AlexNet":
        """`load_alexnet_weights(self, weights)`."""
        return load_alexnet_weights(self, weights)


def _fetch(spec: Weights, progress: bool) -> dict[str, torch.Tensor]:
    try:
        return torch.hub.load_state_dict_from_url(spec.url, progress=progress, check_hash=True,
                                                  map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as e:  # offline (URLError is an OSError), bad hash, bad file
        raise InputError(
            f"could not fetch the ImageNet AlexNet weights from {spec.url} ({e}); without internet, download "
            f"that file elsewhere and pass weights=PATH (or put it in {Path(torch.hub.get_dir()) / 'checkpoints'})"
        ) from e


def load_alexnet_weights(model: AlexNet, weights: str | Path = "imagenet", progress: bool = True,
                         normalize: bool = True) -> AlexNet:
    """Load ImageNet AlexNet weights ("imagenet" or a local file in torchvision's layout) into `model`.

    `classifier.6` (the 1000-class layer) is skipped when its shape differs from the model's, so
    a `num_classes=2` model keeps a fresh final layer. Other missing, unexpected or mis-shaped keys
    raise `InputError` naming the key and the shapes. Sets `model.normalize = normalize`.
    """
    if normalize and model.in_channels != 3:
        raise InputError(f"ImageNet AlexNet weights need in_channels=3, got in_channels={model.in_channels}; "
                         "use to_three_channels on grayscale input")
    if isinstance(weights, str) and weights.lower() in WEIGHTS:
        state, source = _fetch(WEIGHTS[weights.lower()], progress), WEIGHTS[weights.lower()].url
    else:
        state, source = read_state_dict(weights, "AlexNet"), str(weights)
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise InputError(f"{source}: unexpected AlexNet key(s) {unexpected[:5]}")
    keep: dict[str, torch.Tensor] = {}
    for key, target in own.items():
        if key not in state:
            if key.startswith(f"{model.last_layer}."):
                continue  # a headless file: the final layer stays as initialised
            raise InputError(f"{source}: missing AlexNet key {key!r} (expected shape {tuple(target.shape)})")
        got = state[key]
        if got.shape != target.shape:
            if key.startswith(f"{model.last_layer}."):
                continue  # ImageNet head (1000 classes) vs our num_classes: keep ours
            raise InputError(f"{source}: AlexNet key {key!r} has shape {tuple(got.shape)}, "
                             f"the model expects {tuple(target.shape)}")
        keep[key] = got
    model.load_state_dict(keep, strict=False)
    model.normalize = normalize
    return model
