"""The network part of a bundle as one module with fixed inputs and outputs, shared by the PyTorch
runtime and the ONNX export, so both compute exactly the same thing.

`SliceGraph`: slices (N, C', S, S) -> slice_probability (N,), features (N, F).
`SequenceGraph` (scan bundles only): features (Z, F) of one scan -> scan_probability (1,).

Splitting the two keeps memory bounded: slices go through the encoder a batch at a time and only
the (Z, F) features of the whole scan meet the LSTM. What a bundle kind does with the outputs
(maximum, 95th percentile, an SVM) happens in numpy, in `ichdet.inference.predictor`.
"""
from __future__ import annotations

import torch
from torch import nn


class SliceGraph(nn.Module):
    """slices (N, C', S, S) in [0, 1] -> (P(bleed) per slice (N,), slice features (N, F)).

    `classifier` is the slice model itself, or a scan model's encoder (its own slice head gives
    the per-slice probabilities). One-channel slices are repeated to three for a three-channel
    network (an ImageNet AlexNet), as training did.
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.in_channels = int(getattr(classifier, "in_channels", 1))

    def forward(self, slices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if slices.shape[1] == 1 and self.in_channels == 3:
            slices = slices.expand(-1, 3, -1, -1)
        features = self.classifier.forward_features(slices)
        logits = self.classifier.forward_head(features)
        return torch.softmax(logits.float(), dim=1)[:, 1], features.float()


class SequenceGraph(nn.Module):
    """features (Z, F) of one scan -> P(bleed) (1,): the scan model's LSTM and head, unpadded."""

    def __init__(self, scan_model: nn.Module):
        super().__init__()
        self.lstm = scan_model.lstm
        self.head = scan_model.head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _, (h_n, _) = self.lstm(features.unsqueeze(0))  # h_n (layers * 2, 1, hidden)
        logits = self.head(torch.cat([h_n[-2], h_n[-1]], dim=1))
        return torch.softmax(logits.float(), dim=1)[:, 1]


def split_model(model: nn.Module, kind: str) -> tuple[SliceGraph, SequenceGraph | None]:
    """A bundle's model -> its slice graph and, for kind "scan", its sequence graph (both eval)."""
    if kind == "scan":
        return SliceGraph(model.encoder).eval(), SequenceGraph(model).eval()
    return SliceGraph(model).eval(), None
