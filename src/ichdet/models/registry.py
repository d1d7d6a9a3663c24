"""Model registry (timm style): `@register_model(name)` on a class, `create_model(name, **kw)` to build it.

Every registered class carries its registry name in `model_name` and returns, from `config()`, the
keyword arguments that rebuild it, so `create_model(m.model_name, **m.config())` round-trips.
"""
from __future__ import annotations

import inspect
from typing import Callable, TypeVar

from torch import nn

from ichdet.errors import InputError

ModelT = TypeVar("ModelT", bound=type[nn.Module])

_MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[ModelT], ModelT]:
    """Class decorator: register an `nn.Module` subclass under `name` and set its `model_name`."""

    def decorate(cls: ModelT) -> ModelT:
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered to {_MODELS[name].__qualname__}")
        cls.model_name = name
        _MODELS[name] = cls
        return cls

    return decorate


def list_models() -> list[str]:
    """Sorted names of the registered torch models."""
    return sorted(_MODELS)


def model_class(name: str) -> type[nn.Module]:
    """The class registered under `name`; InputError naming the known models otherwise."""
    if not isinstance(name, str) or name not in _MODELS:
        raise InputError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _MODELS[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the model registered under `name` with `kwargs` (e.g. the output of `model.config()`)."""
    cls = model_class(name)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:  # unknown or missing keyword: user input, say which model
        raise InputError(f"bad arguments for model {name!r}: {e}; got {sorted(kwargs)}") from e
    return cls(**kwargs)
