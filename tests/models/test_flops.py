"""count_flops on layers whose FLOPs are known by hand."""
from __future__ import annotations

import torch
from torch import nn

from ichdet.models import SliceCNN, count_flops


def test_linear_flops():
    assert count_flops(nn.Linear(10, 20), torch.rand(3, 10)) == 2 * 10 * 20 * 3


def test_linear_training_flops():
    layer = nn.Linear(10, 20)
    x = torch.rand(3, 10, requires_grad=True)
    # forward + grad wrt input + grad wrt weight: three matmuls of the same size
    assert count_flops(layer, x, backward=True) == 3 * 2 * 10 * 20 * 3
    assert layer.weight.grad is None  # gradients restored


def test_conv_flops():
    conv = nn.Conv2d(2, 4, 3, padding=1)
    assert count_flops(conv, torch.rand(1, 2, 8, 8)) == 2 * (2 * 9) * 4 * 8 * 8


def test_model_flops_positive_and_training_larger():
    model = SliceCNN(base_width=4)
    x = torch.rand(1, 1, 64, 64)
    fwd = count_flops(model, x)
    assert fwd > 0 and count_flops(model, x, backward=True) > fwd


def test_lstm_flops_by_formula():
    """FlopCounterMode sees nothing inside aten::lstm; count_flops adds 2 * 4H(I + H) per layer,
    direction and step, from what the LSTM received (padded batch or packed sequence)."""
    from ichdet.models.flops import lstm_flops

    lstm = nn.LSTM(6, 5, num_layers=2, bidirectional=True, batch_first=True)
    per_step = 2 * (2 * 4 * 5 * (6 + 5)) + 2 * (2 * 4 * 5 * (10 + 5))
    assert lstm_flops(lstm, 7) == 7 * per_step
    assert count_flops(lstm, torch.rand(2, 7, 6)) == 14 * per_step
    packed = nn.utils.rnn.pack_padded_sequence(torch.rand(2, 7, 6), [7, 3], batch_first=True)
    assert count_flops(lstm, (packed,)) == 10 * per_step
    x = torch.rand(1, 4, 6, requires_grad=True)
    assert count_flops(lstm, x, backward=True) >= 3 * 4 * per_step
