"""Scores from a trained model on prepared scans: per-slice probabilities and features, and one
score per scan for every bundle kind (used for validation, operating points and evaluation).

All functions run the model in eval mode under `torch.inference_mode` and take prepared images
``(C, Z, S, S)`` in [0, 1] as `ichdet.datasets.PreparedScan.image` holds them.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ichdet.datasets.prepared import PreparedCohort
from ichdet.datasets.scans import volume_to_sequence
from ichdet.errors import InputError
from ichdet.models.aggregate import slice_max, slice_p95

SLICE_BATCH = 64  # slices per forward pass when scoring a volume


def adapt_input(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Replicate one-channel slices to three for a three-channel model (ImageNet AlexNet)."""
    want = getattr(model, "in_channels", x.shape[1])
    if x.ndim == 4 and x.shape[1] == 1 and want == 3:
        return x.expand(-1, 3, -1, -1)
    return x


def positive_probability(logits: torch.Tensor) -> torch.Tensor:
    """Logits (N, K) -> P(class 1) (N,) by softmax (the papers' two-class softmax heads)."""
    return torch.softmax(logits.float(), dim=1)[:, 1]


def _slice_chunks(image: np.ndarray, context: int, batch: int) -> Iterator[torch.Tensor]:
    seq = volume_to_sequence(torch.from_numpy(np.array(image, dtype=np.float32)), context)  # (Z, C', S, S)
    for i in range(0, seq.shape[0], batch):
        yield seq[i:i + batch]


@torch.inference_mode()
def slice_probabilities(model: torch.nn.Module, image: np.ndarray, context: int = 0,
                        batch: int = SLICE_BATCH) -> np.ndarray:
    """Slice classifier on every slice: (C, Z, S, S) -> float64 (Z,) P(bleed)."""
    model.eval()
    out = [positive_probability(model(adapt_input(model, x))) for x in _slice_chunks(image, context, batch)]
    return torch.cat(out).double().numpy()


@torch.inference_mode()
def slice_features(model: torch.nn.Module, image: np.ndarray, context: int = 0,
                   batch: int = SLICE_BATCH) -> np.ndarray:
    """`forward_features` on every slice: (C, Z, S, S) -> float32 (Z, F)."""
    model.eval()
    out = [model.forward_features(adapt_input(model, x)) for x in _slice_chunks(image, context, batch)]
    return torch.cat(out).float().numpy()


@torch.inference_mode()
def scan_probability(model: torch.nn.Module, image: np.ndarray, context: int = 0) -> float:
    """Scan model (scan_lstm) on one scan: (C, Z, S, S) -> P(bleed)."""
    model.eval()
    seq = volume_to_sequence(torch.from_numpy(np.array(image, dtype=np.float32)), context)
    return float(positive_probability(model(seq.unsqueeze(0)))[0])


def kind_score(kind: str, slice_probability: np.ndarray | None, features: np.ndarray | None = None,
               scan_probability: float | None = None, aggregate: str = "max", svm: Any = None
               ) -> tuple[float, np.ndarray | None]:
    """A bundle kind's scan score (higher = bleed) and the per-slice probabilities a reader sees,
    from what the network gave for one scan: slice_probability (Z,) of the slice head, slice
    features (Z, F), and the scan model's probability.

    "scan": the scan model's probability; "slice"/"aggregate": the maximum (or 95th percentile)
    of slice probabilities; "feature_svm": the SVM's probability on padded slice features;
    "alexnet_svm": the maximum over slices of the SVM's slice probability (which are then the
    slice probabilities)."""
    if kind == "scan":
        return float(scan_probability), slice_probability
    if kind in ("slice", "aggregate"):
        return (slice_p95(slice_probability) if aggregate == "p95" else slice_max(slice_probability)), slice_probability
    if kind == "feature_svm":
        return float(svm.predict_proba([features])[0, 1]), slice_probability
    if kind == "alexnet_svm":
        p = np.asarray(svm.predict_proba(features)[:, 1], dtype=np.float64)
        return float(p.max()), p
    raise InputError(f"cannot score scans for bundle kind {kind!r}")


def score_scans(kind: str, model: torch.nn.Module, cohort: PreparedCohort, scan_ids: Sequence[str],
                context: int = 0, aggregate: str = "max", svm: Any = None) -> np.ndarray:
    """One score per scan (higher = bleed) for a bundle `kind` (see `kind_score`), computing only
    the network outputs that kind needs."""
    scores = []
    for sid in scan_ids:
        image = cohort[sid].image
        if kind == "scan":
            score, _ = kind_score(kind, None, scan_probability=scan_probability(model, image, context))
        elif kind in ("feature_svm", "alexnet_svm"):
            score, _ = kind_score(kind, None, slice_features(model, image, context), svm=svm)
        else:
            score, _ = kind_score(kind, slice_probabilities(model, image, context), aggregate=aggregate)
        scores.append(score)
    return np.asarray(scores, dtype=np.float64)


def _sample_batches(model: torch.nn.Module, samples: Sequence[tuple[torch.Tensor, int]], batch: int
                    ) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """Slice samples [(x (C', S, S), y)] -> batches (x (b, C', S, S) fit for `model`, labels)."""
    for i in range(0, len(samples), batch):
        part = samples[i:i + batch]
        yield adapt_input(model, torch.stack([s[0] for s in part])), [int(s[1]) for s in part]


@torch.inference_mode()
def sample_features(model: torch.nn.Module, samples: Sequence[tuple[torch.Tensor, int]], batch: int = SLICE_BATCH
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Slice samples [(x (C', S, S), y)] -> (`forward_features` float32 (N, F), labels (N,))."""
    model.eval()
    feats, labels = [], []
    for xs, ys in _sample_batches(model, samples, batch):
        feats.append(model.forward_features(xs).float().numpy())
        labels += ys
    return np.concatenate(feats), np.asarray(labels, dtype=np.int64)


@torch.inference_mode()
def score_slices(model: torch.nn.Module, samples: Sequence[tuple[torch.Tensor, int]], batch: int = SLICE_BATCH,
                 svm: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Slice samples [(x (C', S, S), y)] -> (P(bleed) (N,), labels (N,)); with `svm`, the SVM's
    probability on the model's features instead of the softmax."""
    model.eval()
    probs, labels = [], []
    for xs, ys in _sample_batches(model, samples, batch):
        if svm is None:
            probs.append(positive_probability(model(xs)).double().numpy())
        else:
            probs.append(svm.predict_proba(model.forward_features(xs).float().numpy())[:, 1])
        labels += ys
    return np.concatenate(probs) if probs else np.zeros(0), np.asarray(labels, dtype=np.int64)
