"""Input checks shared by the models: bad shapes become `InputError`s that name the shape."""
from __future__ import annotations

import torch

from ichdet.errors import InputError


def check_image_batch(x: torch.Tensor, in_channels: int, min_size: int, who: str) -> None:
    """Require a float tensor (B, in_channels, H, W) with H, W >= min_size."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{who} expects a torch.Tensor (B, {in_channels}, H, W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise InputError(f"{who} expects input (B, {in_channels}, H, W), got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < min_size:
        raise InputError(f"{who} needs H and W >= {min_size}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{who} expects a floating point tensor, got dtype {x.dtype}")


def check_feature_batch(f: torch.Tensor, feature_dim: int, who: str) -> None:
    """Require a tensor (B, feature_dim)."""
    if not isinstance(f, torch.Tensor) or f.ndim != 2 or f.shape[1] != feature_dim:
        shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
        raise InputError(f"{who} expects features (B, {feature_dim}), got shape {shape}")
