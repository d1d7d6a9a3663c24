"""A bundle's kind: how its network's outputs on one scan become the scan's score.

    kind          network                      scan score                           SVM head
    slice         slice classifier             max of slice P(bleed)                -
    aggregate     slice classifier             max or 95th percentile (`aggregate`) -
    scan          scan_lstm (encoder + LSTMs)  the scan model's P(bleed)            -
    alexnet_svm   slice network, features      max over slices of the SVM's P       SVMHead
    slice_svm     the same on any slice network (EfficientNet-SVM: frozen ImageNet features)
    feature_svm   slice network, features      SVM on padded slice features         FeatureSVM
    segmentation  seg_unet (6-class masks)     max of slice bleed scores            -

A segmentation bundle's `ModelOutputs.slice_probability` holds each slice's bleed score: the
largest P(any bleed) = 1 - P(background) that holds over a 3 x 3 patch of prepared pixels
(`ichdet.models.seg_unet.bleed_slice_scores`: a minimum filter, so isolated specks do not count);
its `features` are empty (Z, 0). The scan score is their maximum.

Each kind is one object in `KINDS` that answers for itself: which network gives the per-slice
outputs (`slice_classifier`), which labels a bundle of it reports (`labels`: a multi-label network
read directly gives the five subtypes then "any"; SVM heads are binary), which label outputs its
graph must give (`graph_labels`), and the rule that turns `ModelOutputs` into a `ScanScore`
(`score`). Evaluation, validation, `predict` and the server all score through `Kind.score`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from ichdet.errors import InputError
from ichdet.models.aggregate import FeatureSVM, slice_max, slice_p95
from ichdet.models.heads import BINARY, head_of
from ichdet.models.svm_head import SVMHead


@dataclass
class ModelOutputs:
    """What the network says about one scan.

    slice_probability: float64 (Z,) P(bleed) of each slice (the slice head; for a scan model, its
        encoder's slice head).
    features: float32 (Z, F) slice features (the SVM kinds classify these).
    scan_probability: the scan model's P(bleed); None for slice models.
    slice_labels: float64 (Z, L) label probabilities of each slice ("any" last, equal to
        slice_probability) from a multi-label slice classifier of a subtype bundle, else None.
    scan_labels: float64 (L,) the multi-label scan model's label probabilities ("any" last, equal
        to scan_probability) of a subtype scan bundle, else None.
    """

    slice_probability: np.ndarray
    features: np.ndarray
    scan_probability: float | None
    slice_labels: np.ndarray | None = None
    scan_labels: np.ndarray | None = None


@dataclass
class ScanScore:
    """One scan's result under a bundle kind.

    probability: the scan score (higher = bleed; a probability for every kind).
    slice_probabilities: float64 (Z,) what a reader sees per slice (the SVM's, for alexnet_svm).
    label_probs: float64 (L,) label probabilities ("any" last, equal to `probability`) of a bundle
        that reports subtypes, else None.
    """

    probability: float
    slice_probabilities: np.ndarray
    label_probs: np.ndarray | None = None


def _reduce(aggregate: str):
    return slice_p95 if aggregate == "p95" else slice_max


@dataclass(frozen=True)
class Kind:
    """A bundle kind (see the module docstring). `svm`: the SVM head class its bundles carry, or
    None; `sequence`: the network reads the whole scan (its slice classifier is `model.encoder`)."""

    name: str
    svm: type | None = None
    sequence: bool = False

    def slice_classifier(self, model: nn.Module) -> nn.Module:
        """The network that gives per-slice probabilities and features (Grad-CAM, ONNX, scoring)."""
        return model.encoder if self.sequence else model

    def labels(self, model: nn.Module) -> tuple[str, ...]:
        """What a bundle of this kind on `model` reports per scan: the network head's labels, or
        ("any",) when an SVM head decides."""
        return BINARY.labels if self.svm is not None else head_of(model).labels

    def graph_labels(self, model: nn.Module) -> tuple[bool, bool]:
        """(the slice graph gives label probabilities, the sequence graph does): only for a bundle
        that reports subtypes, for its multi-label networks."""
        if len(self.labels(model)) == 1:
            return False, False
        if self.sequence:
            return head_of(model.encoder).multilabel, True
        return True, False

    def score(self, out: ModelOutputs, aggregate: str = "max", svm: Any = None) -> ScanScore:
        """The scan's score, per-slice probabilities and label probabilities from what the network
        gave (`ModelOutputs`)."""
        raise NotImplementedError


class _SliceKind(Kind):
    def score(self, out: ModelOutputs, aggregate: str = "max", svm: Any = None) -> ScanScore:
        reduce = _reduce(aggregate)
        label_probs = None
        if out.slice_labels is not None:
            per_slice = np.asarray(out.slice_labels, dtype=np.float64)
            label_probs = np.array([reduce(per_slice[:, j]) for j in range(per_slice.shape[1])])
        return ScanScore(float(reduce(out.slice_probability)), out.slice_probability, label_probs)


class _ScanKind(Kind):
    def score(self, out: ModelOutputs, aggregate: str = "max", svm: Any = None) -> ScanScore:
        label_probs = None if out.scan_labels is None else np.asarray(out.scan_labels, dtype=np.float64)
        return ScanScore(float(out.scan_probability), out.slice_probability, label_probs)


class _SliceSVMKind(Kind):
    def score(self, out: ModelOutputs, aggregate: str = "max", svm: Any = None) -> ScanScore:
        p = np.asarray(svm.predict_proba(out.features)[:, 1], dtype=np.float64)
        return ScanScore(float(p.max()), p)


class _FeatureSVMKind(Kind):
    def score(self, out: ModelOutputs, aggregate: str = "max", svm: Any = None) -> ScanScore:
        return ScanScore(float(svm.predict_proba([out.features])[0, 1]), out.slice_probability)


class _SegKind(Kind):
    def score(self, out: ModelOutputs, aggregate: str = "max", svm: Any = None) -> ScanScore:
        p = np.asarray(out.slice_probability, dtype=np.float64)
        return ScanScore(float(p.max()) if p.size else 0.0, p)


KINDS: dict[str, Kind] = {k.name: k for k in (
    _SliceKind("slice"), _ScanKind("scan", sequence=True), _SliceKind("aggregate"),
    _SliceSVMKind("alexnet_svm", svm=SVMHead), _SliceSVMKind("slice_svm", svm=SVMHead), _FeatureSVMKind("feature_svm", svm=FeatureSVM),
    _SegKind("segmentation"),
)}


def get_kind(name: str | Kind) -> Kind:
    """The kind named `name` (a Kind passes through); an unknown name is an InputError."""
    if isinstance(name, Kind):
        return name
    if name not in KINDS:
        raise InputError(f"bundle kind must be one of {', '.join(KINDS)}, got {name!r}")
    return KINDS[name]
