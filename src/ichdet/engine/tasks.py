"""The two trainable tasks: what an epoch samples, how a batch reaches the model, how validation
scores it. `SliceTask` is the slice stage (sec. 3.3.1) and the 2D experiments; `ScanTask` the
LSTM and end-to-end stages (sec. 3.3.2-3.3.3).

With ``model.labels: subtypes`` both train multi-label heads (five subtypes, then "any") on
targets with -1 for unknown, by the RSNA weighted log loss (``optim.loss: rsna``) or its
unweighted form (``bce``); sampling stays balanced on "any", and validation adds the loss and
the mean subtype AUC.

With ``optim.slice_loss_weight`` w > 0, a training encoder (end-to-end) and slice labels, the scan
stage adds w x the encoder's own slice-head loss (`SliceTerm`, the slice stage's loss) on the
batch's real slices with a label, so the head predict's per-slice probabilities come from keeps up
with the encoder's features; validation reports that head's AUC on the labelled validation slices
(``val_slice_auc``) in every scan stage."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ichdet.datasets.scans import ScanDataset, balanced_scan_epoch, collate_scans
from ichdet.datasets.slices import Key, SliceDataset, SliceIndex, epoch_keys, validation_sample
from ichdet.engine.run import Run
from ichdet.engine.losses import rsna_weighted_bce, slice_head_loss
from ichdet.engine.seg_loss import seg_hits, seg_loss
from ichdet.engine.scoring import adapt_input, score_scan, score_slices
from ichdet.errors import InputError
from ichdet.metrics import RSNA_WEIGHTS, SUBTYPE_LABELS, roc_auc, rsna_log_loss, subtype_aucs
from ichdet.models.heads import MULTILABEL, head_of

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


class SliceTerm(NamedTuple):
    """A scan batch's auxiliary slice loss: the encoder head's logits (N, K) on the batch's N real
    slices, their targets (N, 6) (five subtypes, then the slice label; -1 unknown), whether the head
    is multi-label, its multi-label loss (rsna or bce) and the term's weight."""

    logits: torch.Tensor
    targets: torch.Tensor
    multilabel: bool
    loss: str
    weight: float

    def value(self) -> torch.Tensor:
        """The slice loss (unweighted): `slice_head_loss`, as the slice stage trains the head."""
        return slice_head_loss(self.logits, self.targets, self.multilabel, LOSS_WEIGHTS[self.loss])


def slice_loss_weight(run: Run, train_ids: Sequence[str]) -> float:
    """``optim.slice_loss_weight`` where it applies: 0 unless the encoder trains and a positive
    training scan has slice labels (slice_labels.csv); says so when it drops a weight it was given."""
    weight = run.cfg.optim.slice_loss_weight
    if weight == 0:
        return 0.0
    if run.cfg.model.freeze_encoder:
        run.log(f"optim.slice_loss_weight {weight:g} not used: the encoder is frozen (its slice head does not train)")
        return 0.0
    labels = run.cohort.slice_labels
    if not any(sl.label == 1 for sid in train_ids for sl in labels.get(sid, ())):
        run.log(f"optim.slice_loss_weight {weight:g} not used: no positive training scan has slice labels")
        return 0.0
    return float(weight)


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
        self.slice_weight = slice_loss_weight(run, self.train_ids)
        self.slice_loss = self.loss if self.loss in LOSS_WEIGHTS else "rsna"  # a multi-label slice head's loss
        self.dataset = ScanDataset(run.cohort, self.train_ids, context=run.context, augment=cfg.data.augment,
                                   seed=cfg.seed, targets=self.targets, slice_targets=self.slice_weight > 0)
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

    def forward(self, model: torch.nn.Module, batch: Any) -> tuple:
        """(scan logits, y), and with a slice loss a third item, the batch's `SliceTerm`: one encoder
        pass (`ScanLSTM.forward_with_slices`) gives the scan logits and the slice head's logits."""
        if not self.slice_weight:
            x, lengths, y, _ = batch
            return model(x, lengths), y
        x, lengths, y, _, rows = batch
        logits, slice_logits = model(x, lengths, with_slices=True)
        real = torch.arange(rows.shape[1], device=rows.device).unsqueeze(0) < lengths.to(rows.device).unsqueeze(1)
        multilabel = head_of(getattr(model, "module", model).encoder) is MULTILABEL  # DDP wraps the model
        return logits, y, SliceTerm(slice_logits, rows[real], multilabel, self.slice_loss, self.slice_weight)

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        """ROC AUC (and accuracy, loss) over every validation scan; ``val_slice_auc``: the AUC of
        the per-slice probabilities (the encoder's slice head) on the validation slices with a label."""
        scores = [score_scan("scan", model, self.cohort[s].image, self.context) for s in self.val_ids]
        if self.targets == "subtypes":
            probs = np.stack([s.label_probs for s in scores])
            row = _multilabel_row(self.cohort.label_targets(self.val_ids).astype(np.float64), probs, self.loss)
        else:
            row = _validation_row(self.cohort.labels(self.val_ids), np.array([s.probability for s in scores]))
        return {**row, "val_slice_auc": self._slice_auc(scores)}

    def _slice_auc(self, scores: Sequence[Any]) -> float:
        y = np.concatenate([np.asarray(self.cohort[s].slice_labels) for s in self.val_ids])
        p = np.concatenate([np.asarray(s.slice_probabilities, dtype=np.float64) for s in scores])
        known = y >= 0
        if len(y) != len(p) or len(np.unique(y[known])) < 2:
            return float("nan")
        return roc_auc(y[known], p[known])


def training_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "cross_entropy",
                  slices: SliceTerm | None = None) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """A training batch's loss: `loss_and_hits`, plus ``slices.weight`` x the slice loss when a
    `SliceTerm` comes with the batch -> (loss, hits, the unweighted slice loss or None). Without
    one the loss is exactly `loss_and_hits`'."""
    value, hits = loss_and_hits(logits, y, loss)
    if slices is None:
        return value, hits, None
    part = slices.value()
    return value + slices.weight * part, hits, part


def loss_and_hits(logits: torch.Tensor, y: torch.Tensor, loss: str = "cross_entropy") -> tuple[torch.Tensor, int]:
    """The training loss and the number of correct bleed decisions in a batch.

    "cross_entropy": logits (B, K) of a softmax head, y int64 (B,); hits = correct argmax.
    "rsna" / "bce": logits and y (B, L) of a multi-label head, -1 unknown (`rsna_weighted_bce`,
    "any" weighted 2 or all equal); hits = correct "any" decisions at 0.5.
    "dice_ce": logits (B, 6, H, W) of seg_unet, y (B, H, W) labels (`seg_loss`); hits = slices
    whose bleed decision is right (`seg_hits`)."""
    if loss == "cross_entropy":
        return F.cross_entropy(logits.float(), y), int((logits.argmax(1) == y).sum())
    if loss == "dice_ce":
        return seg_loss(logits, y), seg_hits(logits, y)
    if loss not in LOSS_WEIGHTS:
        raise InputError(f"loss must be cross_entropy, rsna, bce or dice_ce, got {loss!r}")
    value = rsna_weighted_bce(logits, y, LOSS_WEIGHTS[loss])
    return value, int(((logits[:, -1] > 0) == (y[:, -1] == 1)).sum())


__all__ = ["ScanTask", "SliceTask", "SliceTerm", "loss_and_hits", "slice_loss_weight", "training_loss"]
