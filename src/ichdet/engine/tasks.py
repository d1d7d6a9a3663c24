"""The two trainable tasks: what an epoch samples, how a batch reaches the model, how validation
scores it. `SliceTask` is the slice stage (sec. 3.3.1) and the 2D experiments; `ScanTask` the
LSTM and end-to-end stages (sec. 3.3.2-3.3.3).

With ``model.labels: subtypes`` both train multi-label heads (five subtypes, then "any") on
targets with -1 for unknown, by the RSNA weighted log loss (``optim.loss: rsna``) or its
unweighted form (``bce``); sampling stays balanced on "any", and validation adds the loss and
the mean subtype AUC."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ichdet.datasets.scans import ScanDataset, balanced_scan_epoch, collate_scans
from ichdet.datasets.slices import Key, SliceDataset, SliceIndex, epoch_keys, validation_sample
from ichdet.engine.run import Run
from ichdet.engine.losses import rsna_weighted_bce
from ichdet.engine.scoring import adapt_input, score_scan, score_slices
from ichdet.errors import InputError
from ichdet.metrics import RSNA_WEIGHTS, SUBTYPE_LABELS, roc_auc, rsna_log_loss, subtype_aucs

LOSS_WEIGHTS = {"rsna": RSNA_WEIGHTS, "bce": (1.0,) * len(SUBTYPE_LABELS)}  # multi-label losses


def _validation_row(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    eps = 1e-7
    pc = np.clip(p, eps, 1 - eps)
    loss = float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))) if len(y) else float("nan")
    acc = float(np.mean((p >= 0.5) == (y == 1))) if len(y) else float("nan")
    return {"val_loss": loss, "val_accuracy": acc, "val_auc": roc_auc(y, p) if len(y) else float("nan"),
            "val_n": int(len(y))}


def _multilabel_row(targets: np.ndarray, probs: np.ndarray, loss: str) -> dict[str, float]:
    """Validation of a multi-label head: accuracy and AUC on "any", the training loss's own form
    (weighted or not) as val_loss, and the mean AUC over the subtypes that have both classes."""
    row = _validation_row(targets[:, -1], probs[:, -1])
    row["val_loss"] = rsna_log_loss(targets, probs, LOSS_WEIGHTS[loss], eps=1e-7)
    aucs = [v["auc"] for k, v in subtype_aucs(targets, probs).items() if k != "any" and v is not None]
    row["val_subtype_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    return row


def balanced_prevalence(positive_targets: np.ndarray) -> np.ndarray | None:
    """Targets (P, L) of the positive samples, -1 unknown -> each label's frequency in balanced
    batches (half positives, half negatives with no label): half its known rate among positives;
    "any" (last) 0.5. None without positives."""
    t = np.asarray(positive_targets, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] == 0:
        return None
    known = (t >= 0).sum(axis=0)
    rate = np.where(known > 0, (t == 1).sum(axis=0) / np.maximum(known, 1), 0.0)
    return 0.5 * rate


class SliceTask:
    """Balanced cranial slices (positives: labelled slices; negatives: slices of negative scans)."""

    def __init__(self, run: Run):
        cfg, d = run.cfg, run.cfg.data
        kw = {"cranial_only": d.cranial_only, "negatives_from_negative_scans": d.negatives_from_negative_scans}
        self.train_index = SliceIndex.build(run.cohort, splits=run.splits, split="train", **kw)
        self.val_index = SliceIndex.build(run.cohort, splits=run.splits, split="val", **kw)
        for name, index in (("training", self.train_index), ("validation", self.val_index)):
            if index.n_pos < 1 or index.n_neg < 1:
                raise InputError(f"the {name} split has {index.n_pos} positive and {index.n_neg} negative usable "
                                 "slice(s); the slice stage needs both (are slice labels present?)",
                                 run.cohort.manifest_path)
        self.targets, self.loss = cfg.model.labels, cfg.optim.resolved_loss(cfg.model.labels)
        self.dataset = SliceDataset(run.cohort, self.train_index, context=run.context, augment=d.augment, seed=cfg.seed,
                                    targets=self.targets)
        self.val_dataset = SliceDataset(run.cohort, self.val_index, context=run.context, targets=self.targets)
        self.val_items = validation_sample(self.val_index, cfg.optim.val_samples, seed=cfg.seed)
        self._val_samples = [self.val_dataset[i] for i in self.val_items]
        self.n_samples = cfg.optim.steps_per_epoch * cfg.optim.batch_size
        self.seed = cfg.seed
        self.collate: Callable | None = None  # default collate: (x (B, C', S, S), y (B,) or (B, 6))
        self.channels_last = cfg.channels_last

    def epoch_keys(self, epoch: int) -> list[Key]:
        return self.train_index.epoch_keys(self.n_samples, self.seed, epoch)

    def forward(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        x = adapt_input(model, x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return model(x), y

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        """The paper's 500 random validation slices: accuracy (and AUC, loss)."""
        s = score_slices(model, self._val_samples)
        if self.targets == "subtypes":
            return _multilabel_row(s.targets, s.label_probs, self.loss)
        return _validation_row(s.y, s.probability)

    def label_prevalence(self) -> np.ndarray | None:
        """(6,) label frequencies of the balanced training batches (subtype targets only)."""
        if self.targets != "subtypes":
            return None
        pos = self.train_index.entries[:self.train_index.n_pos]
        cohort = self.dataset.cohort
        return balanced_prevalence(np.array([[*cohort[e.scan_id].slice_subtypes[e.z], 1] for e in pos]))

    def validation_samples(self) -> Sequence[tuple[torch.Tensor, int | torch.Tensor]]:
        return self._val_samples


class ScanTask:
    """Balanced whole scans, `batch_size` per step (the paper: one), padded to the longest."""

    def __init__(self, run: Run):
        cfg = run.cfg
        self.train_ids, self.val_ids = run.ids("train"), run.ids("val")
        labels = run.cohort.labels(self.train_ids)
        if not (labels == 1).any() or not (labels == 0).any():
            raise InputError(f"the training split needs positive and negative scans, got {int(labels.sum())} positive "
                             f"of {len(labels)}", run.cohort.manifest_path)
        self.labels = labels
        self.targets, self.loss = cfg.model.labels, cfg.optim.resolved_loss(cfg.model.labels)
        self.dataset = ScanDataset(run.cohort, self.train_ids, context=run.context, augment=cfg.data.augment,
                                   seed=cfg.seed, targets=self.targets)
        self.cohort, self.context = run.cohort, run.context
        self.n_samples = cfg.optim.steps_per_epoch * cfg.optim.batch_size
        self.seed = cfg.seed
        self.collate: Callable | None = collate_scans

    def epoch_keys(self, epoch: int) -> list[Key]:
        return epoch_keys(balanced_scan_epoch(self.labels, self.n_samples, self.seed, epoch), epoch)

    def label_prevalence(self) -> np.ndarray | None:
        """(6,) label frequencies of the balanced training batches (subtype targets only)."""
        if self.targets != "subtypes":
            return None
        targets = self.cohort.label_targets(self.train_ids)
        return balanced_prevalence(targets[targets[:, -1] == 1])

    def forward(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths, y, _ = batch
        return model(x, lengths), y

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        """ROC AUC (and accuracy, loss) over every validation scan."""
        scores = [score_scan("scan", model, self.cohort[s].image, self.context) for s in self.val_ids]
        if self.targets == "subtypes":
            probs = np.stack([s.label_probs for s in scores])
            return _multilabel_row(self.cohort.label_targets(self.val_ids).astype(np.float64), probs, self.loss)
        return _validation_row(self.cohort.labels(self.val_ids), np.array([s.probability for s in scores]))


def loss_and_hits(logits: torch.Tensor, y: torch.Tensor, loss: str = "cross_entropy") -> tuple[torch.Tensor, int]:
    """The training loss and the number of correct bleed decisions in a batch.

    "cross_entropy": logits (B, K) of a softmax head, y int64 (B,); hits = correct argmax.
    "rsna" / "bce": logits and y (B, L) of a multi-label head, -1 unknown (`rsna_weighted_bce`,
    "any" weighted 2 or all equal); hits = correct "any" decisions at 0.5."""
    if loss == "cross_entropy":
        return F.cross_entropy(logits.float(), y), int((logits.argmax(1) == y).sum())
    if loss not in LOSS_WEIGHTS:
        raise InputError(f"loss must be cross_entropy, rsna or bce, got {loss!r}")
    value = rsna_weighted_bce(logits, y, LOSS_WEIGHTS[loss])
    return value, int(((logits[:, -1] > 0) == (y[:, -1] == 1)).sum())


__all__ = ["ScanTask", "SliceTask", "loss_and_hits"]
