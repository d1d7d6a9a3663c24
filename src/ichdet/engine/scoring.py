"""Scores from a trained model on prepared scans and on slice samples (validation, operating
points, evaluation).

Scans go through the same graphs as `predict` (`ichdet.models.graph`: `split_model`,
`run_graphs`) in fp32 on the model's device, and a bundle kind's rule (`ichdet.models.kinds`)
turns the network's outputs into the scan's score: one path for validation, `ichdet evaluate`
and `predict`. Prepared images are ``(C, Z, S, S)`` in [0, 1] as
`ichdet.datasets.PreparedScan.image` holds them.

Probabilities come from the network's head (`ichdet.models.heads`): (N, L) label probabilities
with "any" (P(bleed)) last, L = 1 for the papers' two-class softmax.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ichdet.datasets.prepared import PreparedCohort
from ichdet.datasets.scans import volume_to_sequence
from ichdet.models.graph import ModelOutputs, run_graphs, split_model
from ichdet.models.heads import head_of
from ichdet.models.kinds import ScanScore, get_kind

SLICE_BATCH = 64  # slices per forward pass when scoring a volume


def adapt_input(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Replicate one-channel slices to three for a three-channel model (ImageNet AlexNet)."""
    want = getattr(model, "in_channels", x.shape[1])
    if x.ndim == 4 and x.shape[1] == 1 and want == 3:
        return x.expand(-1, 3, -1, -1)
    return x


def model_device(model: torch.nn.Module) -> torch.device:
    """Where `model`'s weights live (inputs are moved there; results come back to the CPU)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def to_model(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` on `model`'s device (a no-op on the CPU; an asynchronous copy from pinned memory on a GPU)."""
    device = model_device(model)
    return x if x.device == device else x.to(device, non_blocking=True)


# ---------------------------------------------------------------- scans
@torch.inference_mode()
def model_outputs(model: torch.nn.Module, kind: str, image: np.ndarray, context: int = 0,
                  batch: int = SLICE_BATCH) -> ModelOutputs:
    """One prepared scan (C, Z, S, S) -> what the network of a bundle `kind` gives (fp32)."""
    model.eval()
    seq = volume_to_sequence(torch.from_numpy(np.array(image, dtype=np.float32)), context)  # (Z, C', S, S)
    slice_graph, sequence_graph = split_model(model, kind)
    return run_graphs(slice_graph, sequence_graph, seq, batch, lambda x: to_model(model, x))


def score_scan(kind: str, model: torch.nn.Module, image: np.ndarray, context: int = 0, aggregate: str = "max",
               svm: Any = None) -> ScanScore:
    """One prepared scan (C, Z, S, S) -> its `ScanScore` under a bundle `kind`."""
    return get_kind(kind).score(model_outputs(model, kind, image, context), aggregate, svm)


def score_scans(kind: str, model: torch.nn.Module, cohort: PreparedCohort, scan_ids: Sequence[str],
                context: int = 0, aggregate: str = "max", svm: Any = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores float64 (N,) (higher = bleed) and, for a bundle that reports subtypes, label
    probabilities float64 (N, L) ("any" last, equal to the score), else None."""
    results = [score_scan(kind, model, cohort[sid].image, context, aggregate, svm) for sid in scan_ids]
    scores = np.asarray([r.probability for r in results], dtype=np.float64)
    label_probs = (np.stack([r.label_probs for r in results]) if results and results[0].label_probs is not None
                   else None)
    return scores, label_probs


def slice_features(model: torch.nn.Module, image: np.ndarray, context: int = 0) -> np.ndarray:
    """A slice network's features of every slice: (C, Z, S, S) -> float32 (Z, F)."""
    return model_outputs(model, "slice", image, context).features


# ---------------------------------------------------------------- slice samples
def any_label(y: int | torch.Tensor) -> int:
    """A sample's bleed label: the label itself, or the last ("any") entry of subtype targets (L,)."""
    return int(y[-1]) if isinstance(y, torch.Tensor) and y.ndim == 1 else int(y)


@dataclass
class SampleScores:
    """Slice samples scored: `probability` float64 (N,) P(bleed); `label_probs` float64 (N, L) label
    probabilities ("any" last; (N, 1) for a two-class head or an SVM); `y` int64 (N,) bleed labels;
    `targets` float64 (N, L) the samples' subtype targets (-1 unknown) when they have them, else None."""

    probability: np.ndarray
    label_probs: np.ndarray
    y: np.ndarray
    targets: np.ndarray | None


def _sample_batches(model: torch.nn.Module, samples: Sequence[tuple[torch.Tensor, Any]], batch: int
                    ) -> Iterator[torch.Tensor]:
    """Slice samples [(x (C', S, S), y)] -> batches x (b, C', S, S) fit for `model`."""
    for i in range(0, len(samples), batch):
        yield adapt_input(model, to_model(model, torch.stack([s[0] for s in samples[i:i + batch]])))


@torch.inference_mode()
def score_slices(model: torch.nn.Module, samples: Sequence[tuple[torch.Tensor, Any]], batch: int = SLICE_BATCH,
                 svm: Any = None) -> SampleScores:
    """Slice samples [(x (C', S, S), y or targets (L,))] -> `SampleScores`; with `svm`, the SVM's
    probability on the model's features instead of the network's head."""
    model.eval()
    head = head_of(model)
    probs = []
    for xs in _sample_batches(model, samples, batch):
        if svm is None:
            probs.append(head.probabilities(model(xs)).double().cpu().numpy())
        else:
            probs.append(svm.predict_proba(model.forward_features(xs).float().cpu().numpy())[:, 1:])
    label_probs = np.concatenate(probs) if probs else np.zeros((0, 1))
    vectors = bool(samples) and isinstance(samples[0][1], torch.Tensor) and samples[0][1].ndim == 1
    targets = np.stack([np.asarray(s[1], dtype=np.float64) for s in samples]) if vectors else None
    return SampleScores(label_probs[:, -1].astype(np.float64), label_probs.astype(np.float64),
                        np.asarray([any_label(s[1]) for s in samples], dtype=np.int64), targets)


@torch.inference_mode()
def sample_features(model: torch.nn.Module, samples: Sequence[tuple[torch.Tensor, int]], batch: int = SLICE_BATCH
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Slice samples [(x (C', S, S), y)] -> (`forward_features` float32 (N, F), bleed labels (N,))."""
    model.eval()
    feats = [model.forward_features(xs).float().cpu().numpy() for xs in _sample_batches(model, samples, batch)]
    return np.concatenate(feats), np.asarray([any_label(s[1]) for s in samples], dtype=np.int64)
