"""The network part of a bundle as one module with fixed inputs and outputs, shared by the PyTorch
runtime and the ONNX export, so both compute exactly the same thing.

`SliceGraph`: slices (N, C', S, S) -> slice_probability (N,), features (N, F) and, with
    `labels`, slice_labels (N, L).
`SequenceGraph` (scan bundles only): features (Z, F) of one scan -> scan_probability (1,) and,
    with `labels`, scan_labels (1, L).

P(bleed) is the softmax P(class 1) of a two-class head, or the sigmoid of the last ("any") logit of
a multi-label head (`ichdet.engine.scoring.positive_probability`); a multi-label head's label
probabilities are one sigmoid per logit in `SUBTYPE_LABELS` order, "any" last, and its P(bleed)
is then exactly that last column. Label outputs are made only for the networks whose labels the
bundle reports (`graph_labels`), so a binary bundle's graph is what it always was.

Splitting the two keeps memory bounded: slices go through the encoder a batch at a time and only
the (Z, F) features of the whole scan meet the LSTM. What a bundle kind does with the outputs
(maximum, 95th percentile, an SVM) happens in numpy, in `ichdet.inference.predictor`.
"""
from __future__ import annotations

import torch
from torch import nn

from ichdet.engine.scoring import is_multilabel, label_probabilities, model_labels, positive_probability
from ichdet.models.scan_lstm import fp32_sequence


class SliceGraph(nn.Module):
    """slices (N, C', S, S) in [0, 1] -> (P(bleed) per slice (N,), slice features (N, F)[, label
    probabilities (N, L)]).

    `classifier` is the slice model itself, or a scan model's encoder (its own slice head gives
    the per-slice probabilities). One-channel slices are repeated to three for a three-channel
    network (an ImageNet AlexNet), as training did. `labels` (multi-label classifiers only): also
    return the per-slice label probabilities, whose last column is then the P(bleed) output.
    """

    def __init__(self, classifier: nn.Module, labels: bool = False):
        super().__init__()
        if labels and not is_multilabel(classifier):
            raise ValueError(f"{type(classifier).__name__} has a two-class head: it gives no label probabilities")
        self.classifier = classifier
        self.in_channels = int(getattr(classifier, "in_channels", 1))
        self.multilabel, self.labels = is_multilabel(classifier), bool(labels)

    def forward(self, slices: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if slices.shape[1] == 1 and self.in_channels == 3:
            slices = slices.expand(-1, 3, -1, -1)
        features = self.classifier.forward_features(slices)
        logits = self.classifier.forward_head(features)
        if self.labels:
            labels = label_probabilities(logits)
            return labels[:, -1], features.float(), labels
        return positive_probability(logits, self.multilabel), features.float()


class SequenceGraph(nn.Module):
    """features (Z, F) of one scan -> P(bleed) (1,)[, label probabilities (1, L)]: the scan model's
    LSTM and head, unpadded. `labels` (multi-label scan heads only): also the label probabilities."""

    def __init__(self, scan_model: nn.Module, labels: bool = False):
        super().__init__()
        if labels and not is_multilabel(scan_model):
            raise ValueError(f"{type(scan_model).__name__} has a two-class head: it gives no label probabilities")
        self.lstm = scan_model.lstm
        self.head = scan_model.head
        self.multilabel, self.labels = is_multilabel(scan_model), bool(labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        with fp32_sequence(features) as f:  # the LSTM always in fp32, whatever autocast is on
            _, (h_n, _) = self.lstm(f.unsqueeze(0))  # h_n (layers * 2, 1, hidden)
            logits = self.head(torch.cat([h_n[-2], h_n[-1]], dim=1))
        if self.labels:
            labels = label_probabilities(logits)
            return labels[:, -1], labels
        return positive_probability(logits, self.multilabel)


def graph_labels(model: nn.Module, kind: str) -> tuple[bool, bool]:
    """(slice graph gives slice_labels, sequence graph gives scan_labels) for a bundle's model: only
    when the bundle reports subtypes (`model_labels`), for the multi-label networks among its slice
    classifier (kinds slice, aggregate; a scan model's encoder) and its scan head (kind scan)."""
    if len(model_labels(model, kind)) == 1:
        return False, False
    if kind == "scan":
        return is_multilabel(model.encoder), True
    return True, False


def split_model(model: nn.Module, kind: str) -> tuple[SliceGraph, SequenceGraph | None]:
    """A bundle's model -> its slice graph and, for kind "scan", its sequence graph (both eval)."""
    slice_labels, scan_labels = graph_labels(model, kind)
    if kind == "scan":
        return SliceGraph(model.encoder, slice_labels).eval(), SequenceGraph(model, scan_labels).eval()
    return SliceGraph(model, slice_labels).eval(), None
