"""The network part of a bundle as modules with fixed inputs and outputs, shared by evaluation and
validation (`ichdet.engine.scoring`), the PyTorch runtime and the ONNX export, so all compute
exactly the same thing; `run_graphs` runs them over one scan into `ModelOutputs`.

`SliceGraph`: slices (N, C', S, S) -> slice_probability (N,), features (N, F) and, with
    `labels`, slice_labels (N, L).
`SequenceGraph` (scan bundles only): features (Z, F) of one scan -> scan_probability (1,) and,
    with `labels`, scan_labels (1, L).

P(bleed) and label probabilities come from the network's head (`ichdet.models.heads`): the
softmax P(class 1) of a two-class head, or one sigmoid per logit of a multi-label head ("any"
last, and P(bleed) is then exactly that last column). Label outputs are made only for the
networks whose labels the bundle reports (`Kind.graph_labels`), so a binary bundle's graph is
what it always was.

Splitting the two keeps memory bounded: slices go through the encoder a batch at a time and only
the (Z, F) features of the whole scan meet the LSTM. What a bundle kind does with the outputs
(maximum, 95th percentile, an SVM) happens in numpy, in `ichdet.models.kinds`.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import numpy as np
import torch
from torch import nn

from ichdet.models.heads import head_of
from ichdet.models.kinds import ModelOutputs, get_kind
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
        self.head = head_of(classifier)
        if labels:
            self.head.require_labels(type(classifier).__name__)
        self.classifier = classifier
        self.in_channels = int(getattr(classifier, "in_channels", 1))
        self.labels = bool(labels)

    def forward(self, slices: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if slices.shape[1] == 1 and self.in_channels == 3:
            slices = slices.expand(-1, 3, -1, -1)
        features = self.classifier.forward_features(slices)
        logits = self.classifier.forward_head(features)
        if self.labels:
            labels = self.head.probabilities(logits)
            return labels[:, -1], features.float(), labels
        return self.head.probability(logits), features.float()


class SequenceGraph(nn.Module):
    """features (Z, F) of one scan -> P(bleed) (1,)[, label probabilities (1, L)]: the scan model's
    LSTM and head, unpadded. `labels` (multi-label scan heads only): also the label probabilities."""

    def __init__(self, scan_model: nn.Module, labels: bool = False):
        super().__init__()
        self.reader = head_of(scan_model)
        if labels:
            self.reader.require_labels(type(scan_model).__name__)
        self.lstm = scan_model.lstm
        self.head = scan_model.head
        self.labels = bool(labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        with fp32_sequence(features) as f:  # the LSTM always in fp32, whatever autocast is on
            _, (h_n, _) = self.lstm(f.unsqueeze(0))  # h_n (layers * 2, 1, hidden)
            logits = self.head(torch.cat([h_n[-2], h_n[-1]], dim=1))
        if self.labels:
            labels = self.reader.probabilities(logits)
            return labels[:, -1], labels
        return self.reader.probability(logits)


def split_model(model: nn.Module, kind: str) -> tuple[SliceGraph, SequenceGraph | None]:
    """A bundle's model -> its slice graph and, for a sequence kind (scan), its sequence graph (both eval)."""
    k = get_kind(kind)
    slice_labels, scan_labels = k.graph_labels(model)
    sequence = SequenceGraph(model, scan_labels).eval() if k.sequence else None
    return SliceGraph(k.slice_classifier(model), slice_labels).eval(), sequence


def run_graphs(slice_graph: nn.Module, sequence_graph: nn.Module | None, seq: torch.Tensor, batch: int,
               prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
               autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> ModelOutputs:
    """One scan's slices seq (Z, C', S, S) -> ModelOutputs: `batch` slices at a time through the
    slice graph (each chunk through `prepare`: device, memory format; under `autocast()`), then
    the (Z, F) features through the sequence graph in fp32. Call under `torch.inference_mode`."""
    probs, feats, labels = [], [], []
    scan = scan_labels = None
    with autocast():  # the slice encoder only
        for i in range(0, seq.shape[0], batch):
            out = slice_graph(prepare(seq[i:i + batch]))
            probs.append(out[0].float())
            feats.append(out[1].float())
            if len(out) > 2:
                labels.append(out[2].float())
    features = torch.cat(feats)
    if sequence_graph is not None:  # fp32, outside autocast
        seq_out = sequence_graph(features)
        if isinstance(seq_out, tuple):
            seq_out, scan_labels = seq_out[0], seq_out[1][0].double().cpu().numpy()
        scan = float(seq_out[0])
    return ModelOutputs(torch.cat(probs).double().cpu().numpy(), features.cpu().numpy(), scan,
                        torch.cat(labels).double().cpu().numpy() if labels else None, scan_labels)
