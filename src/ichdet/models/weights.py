"""Reading pretrained weight files: a torch state dict, checked, with common wrappers removed."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ichdet.errors import InputError


def read_state_dict(path: str | Path, who: str) -> dict[str, torch.Tensor]:
    """The state dict in `path` (a torch file of tensors; "state_dict"/"model" wrappers and DDP's
    "module." prefixes removed); an InputError naming the file otherwise. `who` names the network
    in the messages."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{who} weights file not found; pass weights='imagenet' or an existing .pth file", path)
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise InputError(f"not a readable torch state dict ({e})", path) from e
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"expected a state dict of tensors, got {type(state).__name__}", path)
    return {k.removeprefix("module."): v for k, v in state.items()}
