"""Scores from a trained model on prepared scans: per-slice probabilities and features, and one
score per scan for every bundle kind (used for validation, operating points and evaluation).

All functions run the model in eval mode under `torch.inference_mode` and take prepared images
``(C, Z, S, S)`` in [0, 1] as `ichdet.datasets.PreparedScan.image` holds them.

Heads come in two kinds: the papers' two-class softmax (binary), and multi-label heads
(``model.multilabel``) whose L logits are read one sigmoid each, in `SUBTYPE_LABELS` order with
"any" last. P(bleed) is then P("any").
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ichdet.datasets.prepared import PreparedCohort
from ichdet.datasets.scans import volume_to_sequence
from ichdet.errors import InputError
from ichdet.metrics import SUBTYPE_LABELS
from ichdet.models.aggregate import slice_max, slice_p95

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


def is_multilabel(model: Any) -> bool:
    """Whether `model`'s head is multi-label (subtypes, "any" last) rather than a two-class softmax."""
    return bool(getattr(model, "multilabel", False))


def positive_probability(logits: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """Logits (N, K) -> P(bleed) (N,): softmax P(class 1) of a two-class head, or the sigmoid of
    the last ("any") logit of a multi-label head."""
    if multilabel:
        return torch.sigmoid(logits[:, -1].float())
    return torch.softmax(logits.float(), dim=1)[:, 1]


def label_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Multi-label logits (N, L) -> probabilities (N, L), one sigmoid per label."""
    return torch.sigmoid(logits.float())


def model_labels(model: Any, kind: str) -> tuple[str, ...]:
    """The labels a bundle of `kind` built on `model` gives per scan: `SUBTYPE_LABELS` for a
    multi-label network read directly (kinds slice, aggregate, scan), else ("any",) (SVM heads
    are binary)."""
    if is_multilabel(model) and kind in ("slice", "aggregate", "scan"):
        return SUBTYPE_LABELS
    return ("any",)


def _slice_chunks(model: torch.nn.Module, image: np.ndarray, context: int, batch: int) -> Iterator[torch.Tensor]:
    """Prepared image (C, Z, S, S) -> slice batches (b, C', S, S) on the model's device, fit for it."""
    seq = volume_to_sequence(torch.from_numpy(np.array(image, dtype=np.float32)), context)  # (Z, C', S, S)
    for i in range(0, seq.shape[0], batch):
        yield adapt_input(model, to_model(model, seq[i:i + batch]))


@torch.inference_mode()
def slice_probabilities(model: torch.nn.Module, image: np.ndarray, context: int = 0,
                        batch: int = SLICE_BATCH) -> np.ndarray:
    """Slice classifier on every slice: (C, Z, S, S) -> float64 (Z,) P(bleed)."""
    model.eval()
    multi = is_multilabel(model)
    out = [positive_probability(model(x), multi) for x in _slice_chunks(model, image, context, batch)]
    return torch.cat(out).double().cpu().numpy()


@torch.inference_mode()
def slice_label_probabilities(model: torch.nn.Module, image: np.ndarray, context: int = 0,
                              batch: int = SLICE_BATCH) -> np.ndarray:
    """Multi-label slice classifier on every slice: (C, Z, S, S) -> float64 (Z, L), "any" last."""
    _require_multilabel(model)
    model.eval()
    out = [label_probabilities(model(x)) for x in _slice_chunks(model, image, context, batch)]
    return torch.cat(out).double().cpu().numpy()


def _require_multilabel(model: Any) -> None:
    if not is_multilabel(model):
        raise InputError(f"{type(model).__name__} has a two-class head, not a multi-label (subtype) one")


@torch.inference_mode()
def slice_features(model: torch.nn.Module, image: np.ndarray, context: int = 0,
                   batch: int = SLICE_BATCH) -> np.ndarray:
    """`forward_features` on every slice: (C, Z, S, S) -> float32 (Z, F)."""
    model.eval()
    out = [model.forward_features(x) for x in _slice_chunks(model, image, context, batch)]
    return torch.cat(out).float().cpu().numpy()


@torch.inference_mode()
def scan_probability(model: torch.nn.Module, image: np.ndarray, context: int = 0) -> float:
    """Scan model (scan_lstm) on one scan: (C, Z, S, S) -> P(bleed)."""
    model.eval()
    seq = volume_to_sequence(torch.from_numpy(np.array(image, dtype=np.float32)), context)
    return float(positive_probability(model(to_model(model, seq.unsqueeze(0))), is_multilabel(model))[0])


@torch.inference_mode()
def scan_label_probabilities(model: torch.nn.Module, image: np.ndarray, context: int = 0) -> np.ndarray:
    """Multi-label scan model on one scan: (C, Z, S, S) -> float64 (L,), "any" last."""
    _require_multilabel(model)
    model.eval()
    seq = volume_to_sequence(torch.from_numpy(np.array(image, dtype=np.float32)), context)
    return label_probabilities(model(to_model(model, seq.unsqueeze(0))))[0].double().cpu().numpy()


def kind_subtypes(kind: str, slice_labels: np.ndarray | None = None, scan_labels: np.ndarray | None = None,
                  aggregate: str = "max") -> np.ndarray | None:
    """A bundle kind's per-scan label probabilities (L,) ("any" last) from a multi-label network:
    the scan model's own (kind "scan"), or each label's maximum (or 95th percentile) over the
    slices' (Z, L) (kinds "slice", "aggregate"), so that "any" equals `kind_score`'s score.
    None for the SVM kinds, whose heads are binary, or when the network gave no labels."""
    if kind == "scan":
        return None if scan_labels is None else np.asarray(scan_labels, dtype=np.float64)
    if kind in ("slice", "aggregate") and slice_labels is not None:
        reduce = slice_p95 if aggregate == "p95" else slice_max
        per_slice = np.asarray(slice_labels, dtype=np.float64)
        return np.array([reduce(per_slice[:, j]) for j in range(per_slice.shape[1])])
    return None


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


def scan_outputs(kind: str, model: torch.nn.Module, image: np.ndarray, context: int = 0, aggregate: str = "max",
                 svm: Any = None) -> tuple[float, np.ndarray | None]:
    """One prepared scan (C, Z, S, S) -> (its score for a bundle `kind` (see `kind_score`), its
    label probabilities (L,) from `kind_subtypes` or None), computing only what that kind needs."""
    multi = len(model_labels(model, kind)) > 1
    if kind == "scan":
        if multi:
            labels = scan_label_probabilities(model, image, context)
            return float(labels[-1]), labels
        return kind_score(kind, None, scan_probability=scan_probability(model, image, context))[0], None
    if kind in ("feature_svm", "alexnet_svm"):
        return kind_score(kind, None, slice_features(model, image, context), svm=svm)[0], None
    if multi:
        per_slice = slice_label_probabilities(model, image, context)
        return kind_score(kind, per_slice[:, -1], aggregate=aggregate)[0], kind_subtypes(kind, per_slice,
                                                                                          aggregate=aggregate)
    return kind_score(kind, slice_probabilities(model, image, context), aggregate=aggregate)[0], None


def score_scans(kind: str, model: torch.nn.Module, cohort: PreparedCohort, scan_ids: Sequence[str],
                context: int = 0, aggregate: str = "max", svm: Any = None) -> np.ndarray:
    """One score per scan (higher = bleed) for a bundle `kind` (see `kind_score`)."""
    return score_scan_labels(kind, model, cohort, scan_ids, context, aggregate, svm)[0]


def score_scan_labels(kind: str, model: torch.nn.Module, cohort: PreparedCohort, scan_ids: Sequence[str],
                      context: int = 0, aggregate: str = "max", svm: Any = None
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores float64 (N,) and, for a multi-label network, label probabilities float64 (N, L)
    ("any" last, equal to the score), else None; see `scan_outputs`."""
    scores, labels = [], []
    for sid in scan_ids:
        score, lab = scan_outputs(kind, model, cohort[sid].image, context, aggregate, svm)
        scores.append(score)
        labels.append(lab)
    stacked = np.stack(labels) if labels and labels[0] is not None else None
    return np.asarray(scores, dtype=np.float64), stacked


def any_label(y: int | torch.Tensor) -> int:
    """A sample's bleed label: the label itself, or the last ("any") entry of subtype targets (L,)."""
    return int(y[-1]) if isinstance(y, torch.Tensor) and y.ndim == 1 else int(y)


def _sample_batches(model: torch.nn.Module, samples: Sequence[tuple[torch.Tensor, Any]], batch: int
                    ) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """Slice samples [(x (C', S, S), y)] -> batches (x (b, C', S, S) fit for `model`, bleed labels)."""
    for i in range(0, len(samples), batch):
        part = samples[i:i + batch]
        yield adapt_input(model, to_model(model, torch.stack([s[0] for s in part]))), [any_label(s[1]) for s in part]


@torch.inference_mode()
def sample_features(model: torch.nn.Module, samples: Sequence[tuple[torch.Tensor, int]], batch: int = SLICE_BATCH
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Slice samples [(x (C', S, S), y)] -> (`forward_features` float32 (N, F), labels (N,))."""
    model.eval()
    feats, labels = [], []
    for xs, ys in _sample_batches(model, samples, batch):
        feats.append(model.forward_features(xs).float().cpu().numpy())
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
            probs.append(positive_probability(model(xs), is_multilabel(model)).double().cpu().numpy())
        else:
            probs.append(svm.predict_proba(model.forward_features(xs).float().cpu().numpy())[:, 1])
        labels += ys
    return np.concatenate(probs) if probs else np.zeros(0), np.asarray(labels, dtype=np.int64)


@torch.inference_mode()
def score_slice_labels(model: torch.nn.Module, samples: Sequence[tuple[torch.Tensor, torch.Tensor]],
                       batch: int = SLICE_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Slice samples [(x (C', S, S), targets (L,))] of a multi-label model -> (probabilities (N, L),
    targets (N, L) with -1 unknown)."""
    _require_multilabel(model)
    model.eval()
    probs = []
    for i in range(0, len(samples), batch):
        xs = adapt_input(model, to_model(model, torch.stack([s[0] for s in samples[i:i + batch]])))
        probs.append(label_probabilities(model(xs)).double().cpu().numpy())
    targets = np.stack([np.asarray(s[1], dtype=np.float64) for s in samples]) if samples else np.zeros((0, 0))
    return (np.concatenate(probs) if probs else np.zeros((0, 0))), targets
