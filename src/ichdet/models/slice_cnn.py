"""The slice CNN of the 3D method (paper section 3.2), also the "CNN from scratch" of the 2D study.

Five units of [3x3 conv + ReLU] x2 then 2x2 max pooling (stride 2); unit i has
`base_width * 2**i` filters, so the filter count doubles before each pooling. A sixth unit, one
3x3 conv + ReLU, is max-pooled to 1x1 (adaptive, so any H, W >= 2**n_units works; the paper uses
256x256). Two fully connected layers (each Linear + ReLU) give the `feature_dim` (512) slice
features; a dense softmax head gives the slice logits. Dropout (p=0.5) sits before the first dense
layer and before the head, as in the paper (section 3.3.1).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ichdet.errors import InputError
from ichdet.models.checks import check_feature_batch, check_image_batch
from ichdet.models.registry import register_model


def _conv_unit(c_in: int, c_out: int, n_convs: int, pool: nn.Module) -> nn.Sequential:
    """`n_convs` x (3x3 conv, padding 1, + ReLU), then `pool`."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for k in range(1, n_convs + 1):
        layers[f"conv{k}"] = nn.Conv2d(c_in if k == 1 else c_out, c_out, kernel_size=3, padding=1)
        layers[f"relu{k}"] = nn.ReLU()  # not in place: Grad-CAM's backward hooks need the conv output intact
    layers["pool"] = pool
    return nn.Sequential(layers)


@register_model("slice_cnn")
class SliceCNN(nn.Module):
    """2D slice classifier: x (B, in_channels, H, W) -> features (B, feature_dim) -> logits (B, num_classes).

    `in_channels` counts every input plane (CT windows x neighbouring slices).
    `max_width` caps the filter count of any conv (None: no cap; the sixth unit then has
    `base_width * 2**n_units` filters). `multilabel`: the head's `num_classes` logits are read
    one sigmoid each (subtypes, "any" last) instead of one softmax.
    """

    model_name = "slice_cnn"
    classifier_prefixes = ("fc", "head")
    last_layer = "head.linear"

    def __init__(self, in_channels: int = 1, base_width: int = 16, n_units: int = 5, feature_dim: int = 512,
                 num_classes: int = 2, dropout: float = 0.5, max_width: int | None = None, multilabel: bool = False):
        super().__init__()
        for key, value in (("in_channels", in_channels), ("base_width", base_width), ("n_units", n_units),
                           ("feature_dim", feature_dim), ("num_classes", num_classes)):
            if not isinstance(value, int) or value < 1:
                raise InputError(f"SliceCNN {key} must be a positive integer, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise InputError(f"SliceCNN dropout must be in [0, 1), got {dropout!r}")
        if max_width is not None and (not isinstance(max_width, int) or max_width < 1):
            raise InputError(f"SliceCNN max_width must be a positive integer or None, got {max_width!r}")
        self.in_channels, self.base_width, self.n_units = in_channels, base_width, n_units
        self.feature_dim, self.num_classes, self.dropout, self.max_width = feature_dim, num_classes, dropout, max_width
        self.multilabel = bool(multilabel)

        widths = [self._width(i) for i in range(n_units + 1)]
        units: OrderedDict[str, nn.Module] = OrderedDict()
        c_in = in_channels
        for i in range(n_units):
            units[f"unit{i + 1}"] = _conv_unit(c_in, widths[i], 2, nn.MaxPool2d(kernel_size=2, stride=2))
            c_in = widths[i]
        units[f"unit{n_units + 1}"] = _conv_unit(c_in, widths[n_units], 1, nn.AdaptiveMaxPool2d(1))
        self.features = nn.Sequential(units)
        self.fc = nn.Sequential(OrderedDict(
            drop=nn.Dropout(dropout),
            fc1=nn.Linear(widths[n_units], feature_dim), relu1=nn.ReLU(),
            fc2=nn.Linear(feature_dim, feature_dim), relu2=nn.ReLU(),
        ))
        self.head = nn.Sequential(OrderedDict(drop=nn.Dropout(dropout), linear=nn.Linear(feature_dim, num_classes)))
        # Grad-CAM reads the last conv before the final pooling: S/16 maps (16 x 16 at 256 px). The
        # sixth unit's conv would give S/32 (8 x 8), too coarse to show where a small bleed is.
        self.gradcam_layer = f"features.unit{n_units}.conv2"
        self._init_weights()

    def _width(self, i: int) -> int:
        w = self.base_width * 2 ** i
        return w if self.max_width is None else min(w, self.max_width)

    @property
    def min_size(self) -> int:
        """Smallest H and W the network accepts (one pixel left after the pools)."""
        return 2 ** self.n_units

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) -> slice features (B, feature_dim), after the second dense layer."""
        check_image_batch(x, self.in_channels, self.min_size, "SliceCNN")
        return self.fc(torch.flatten(self.features(x), 1))

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """Features (B, feature_dim) -> logits (B, num_classes) (dropout, then the dense softmax layer)."""
        check_feature_batch(f, self.feature_dim, "SliceCNN head")
        return self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def config(self) -> dict:
        """Keyword arguments that rebuild this model with `create_model("slice_cnn", **config)`."""
        return {"in_channels": self.in_channels, "base_width": self.base_width, "n_units": self.n_units,
                "feature_dim": self.feature_dim, "num_classes": self.num_classes, "dropout": self.dropout,
                "max_width": self.max_width, "multilabel": self.multilabel}
