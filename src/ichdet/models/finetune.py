"""Fine-tuning helpers for any model: choose the trainable parameters, give parts their own learning rate.

Parts are named by dotted prefixes of parameter names ("features", "classifier.6"). Models may
declare `classifier_prefixes` (the dense layers on top of the encoder) and `last_layer` (the layer
that gives the logits); without them the last `nn.Linear` stands for both.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ichdet.errors import InputError


def _matches(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _last_linear(model: nn.Module) -> str:
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise InputError(f"{type(model).__name__} has no Linear layer to call its last layer")
    return names[-1]


def _resolve(model: nn.Module, trainable: str | Sequence[str]) -> list[str]:
    if isinstance(trainable, str):
        choice = trainable.lower()
        if choice == "all":
            return [""]
        if choice == "none":
            return []
        if choice == "last":
            return [getattr(model, "last_layer", None) or _last_linear(model)]
        if choice == "classifier":
            return list(getattr(model, "classifier_prefixes", None) or [_last_linear(model)])
        raise InputError(f"trainable must be 'all', 'none', 'classifier', 'last' or a list of prefixes, "
                         f"got {trainable!r}")
    return [str(p) for p in trainable]


def _check_prefixes(model: nn.Module, prefixes: Sequence[str]) -> None:
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(_matches(n, prefix) for n in names):
            tops = sorted({n.split(".")[0] for n in names})
            raise InputError(f"prefix {prefix!r} matches no parameter of {type(model).__name__}; "
                             f"top-level parts: {', '.join(tops)}")


def set_trainable(model: nn.Module, trainable: str | Sequence[str] = "all") -> list[str]:
    """Set `requires_grad` so only the chosen part trains; returns the trainable parameter names.

    `trainable`: "all", "none", "classifier" (the model's dense layers), "last" (the logits layer)
    or a list of dotted prefixes such as ["features.10", "classifier"].
    """
    prefixes = _resolve(model, trainable)
    _check_prefixes(model, prefixes)
    names = []
    for name, p in model.named_parameters():
        on = any(_matches(name, prefix) for prefix in prefixes)
        p.requires_grad_(on)
        if on:
            names.append(name)
    return names


def param_groups(model: nn.Module, base_lr: float, lr_mult: dict[str, float] | None = None) -> list[dict]:
    """Optimizer parameter groups: each trainable parameter goes to its longest matching prefix in
    `lr_mult` with lr = base_lr * mult; the rest get base_lr. Frozen parameters are left out.

    Example: `torch.optim.Adam(param_groups(m, 1e-4, {"features": 0.1}))`. Each group also
    carries a "name" (the prefix, or "default").
    """
    if not base_lr > 0:
        raise InputError(f"base_lr must be positive, got {base_lr!r}")
    lr_mult = dict(lr_mult or {})
    for prefix, mult in lr_mult.items():
        if not mult >= 0:
            raise InputError(f"lr multiplier for {prefix!r} must be >= 0, got {mult!r}")
    _check_prefixes(model, list(lr_mult))
    by_prefix: dict[str, list[nn.Parameter]] = {prefix: [] for prefix in lr_mult}
    rest: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        hits = [prefix for prefix in lr_mult if _matches(name, prefix)]
        (by_prefix[max(hits, key=len)] if hits else rest).append(p)
    groups = [{"name": prefix, "params": params, "lr": base_lr * lr_mult[prefix]}
              for prefix, params in by_prefix.items() if params]
    if rest:
        groups.append({"name": "default", "params": rest, "lr": base_lr})
    return groups
