"""FLOP counts with `torch.utils.flop_counter.FlopCounterMode` (a multiply-add counts as 2 FLOPs)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: nn.Module, example_input: torch.Tensor | tuple[Any, ...], backward: bool = False) -> int:
    """FLOPs of one forward pass on `example_input` (a tensor or a tuple of positional arguments);
    with `backward=True`, of forward + backward of `output.sum()` (one training step without the
    optimizer). Gradients already in the model are restored afterwards.
    """
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    saved = {p: p.grad for p in model.parameters()}
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.set_grad_enabled(backward):
            out = model(*args)
            if backward:
                out = out[0] if isinstance(out, (tuple, list)) else out
                out.float().sum().backward()
    finally:
        for p, g in saved.items():
            p.grad = g
    return int(counter.get_total_flops())
