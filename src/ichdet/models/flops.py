"""FLOP counts with `torch.utils.flop_counter.FlopCounterMode` (a multiply-add counts as 2 FLOPs).

FlopCounterMode does not see inside `aten::lstm` (on padded input; packed input runs visible
matmuls), so the matmuls of an `nn.LSTM` call it saw nothing of are added by formula
(`lstm_flops`), counted from the sequences that LSTM actually received.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def lstm_flops(lstm: nn.LSTM, steps: int) -> int:
    """Matmul FLOPs of `lstm` over `steps` (sequence, time step) pairs: per layer and direction,
    2 * 4H * (I + H) per step (input and recurrent matmuls of the four gates)."""
    h, dirs = lstm.hidden_size, 2 if lstm.bidirectional else 1
    total = 0
    for layer in range(lstm.num_layers):
        i = lstm.input_size if layer == 0 else h * dirs
        total += dirs * steps * 2 * 4 * h * (i + h)
    return int(total)


def _lstm_steps(inputs: tuple) -> int:
    x = inputs[0]
    if isinstance(x, torch.nn.utils.rnn.PackedSequence):
        return int(x.data.shape[0])
    return int(x.shape[0] * x.shape[1]) if x.ndim == 3 else int(x.shape[0])


def count_flops(model: nn.Module, example_input: torch.Tensor | tuple[Any, ...], backward: bool = False) -> int:
    """FLOPs of one forward pass on `example_input` (a tensor or a tuple of positional arguments);
    with `backward=True`, of forward + backward of `output.sum()` (one training step without the
    optimizer). Gradients already in the model are restored afterwards.
    """
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    saved = {p: p.grad for p in model.parameters()}
    counter = FlopCounterMode(display=False)
    lstm, before = [0], {}

    def mark(module: nn.Module, inputs: tuple) -> None:
        before[module] = counter.get_total_flops()

    def add_lstm(module: nn.Module, inputs: tuple, output: Any) -> None:
        if counter.get_total_flops() == before.pop(module):  # aten::lstm ran as one opaque op
            lstm[0] += lstm_flops(module, _lstm_steps(inputs))

    lstms = [m for m in model.modules() if isinstance(m, nn.LSTM)]
    hooks = [m.register_forward_pre_hook(mark) for m in lstms] + [m.register_forward_hook(add_lstm) for m in lstms]
    try:
        with counter, torch.set_grad_enabled(backward):
            out = model(*args)
            if backward:
                out = out[0] if isinstance(out, (tuple, list)) else out
                out.float().sum().backward()
    finally:
        for h in hooks:
            h.remove()
        for p, g in saved.items():
            p.grad = g
    return int(counter.get_total_flops()) + lstm[0] * (3 if backward else 1)  # backward: grads of inputs and weights
