"""Batch norm folded into the convolution before it, and the copy of a model that inference runs.

In eval mode a BatchNorm2d is a per-channel affine map, y = (x - mean) / sqrt(var + eps) * gamma +
beta, so after a convolution it can be folded into that convolution's weight and bias
(`torch.nn.utils.fusion.fuse_conv_bn_eval`) and replaced by an identity: the same outputs to float
rounding, one memory pass less per layer. On `make demo`'s 256 px segmentation network the
unfused batch norms took about a fifth of the CPU time.

Which batch norm follows which convolution is read from the module tree, never guessed from
execution order:
- a module's `conv_bn_pairs` (attribute names, EfficientNet-Lite0's `MBConv` and stems);
- MONAI's `Convolution` block (`conv`, then `adn.N`, when its ADN ordering puts N first);
- adjacent children of an `nn.Sequential` (a Conv2d, then a BatchNorm2d).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ichdet.errors import InputError


def _pairs(module: nn.Module) -> list[tuple[nn.Module, str, nn.Module, str]]:
    """(conv owner, conv name, bn owner, bn name) for each conv -> batch norm pair directly in `module`."""
    found = []
    for conv_name, bn_name in getattr(module, "conv_bn_pairs", ()):
        if hasattr(module, conv_name) and hasattr(module, bn_name):
            found.append((module, conv_name, module, bn_name))
    adn = getattr(module, "adn", None)
    if isinstance(getattr(module, "conv", None), nn.Conv2d) and isinstance(adn, nn.Sequential) and \
            isinstance(getattr(adn, "N", None), nn.BatchNorm2d) and next(iter(adn._modules)) == "N":
        found.append((module, "conv", adn, "N"))
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            if isinstance(module._modules[a], nn.Conv2d) and isinstance(module._modules[b], nn.BatchNorm2d):
                found.append((module, a, module, b))
    return found


def fold_batchnorm(model: nn.Module) -> int:
    """Fold, in place, every batch norm that directly follows a convolution (see the module
    docstring) into it; the batch norm becomes `nn.Identity`. `model` must be in eval mode (the
    folded form has no batch statistics). Returns the number of batch norms folded."""
    if model.training:
        raise InputError("fold_batchnorm needs a model in eval mode (call .eval() first)")
    folded = 0
    for conv_owner, conv_name, bn_owner, bn_name in [p for m in model.modules() for p in _pairs(m)]:
        conv, bn = getattr(conv_owner, conv_name), getattr(bn_owner, bn_name)
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d) or \
                bn.num_features != conv.out_channels or not bn.track_running_stats:
            continue
        setattr(conv_owner, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(bn_owner, bn_name, nn.Identity())
        folded += 1
    return folded


def inference_copy(model: nn.Module, channels_last: bool = True, fold: bool = True) -> nn.Module:
    """A copy of `model` in eval mode for inference only (the original stays as it is: it trains on,
    and Grad-CAM hooks it): with `fold`, batch norms folded into their convolutions and ReLU6s in
    place; ReLUs in place (no autograd in inference, so one memory pass less per activation);
    optionally channels-last weights. Same numbers to float rounding; about 1.8x faster on a 2-core
    CPU than the model as trained."""
    m = copy.deepcopy(model).eval()
    if fold:
        fold_batchnorm(m)
    for mod in m.modules():
        if isinstance(mod, nn.ReLU) or fold and isinstance(mod, nn.ReLU6):
            mod.inplace = True
    return m.to(memory_format=torch.channels_last) if channels_last else m
