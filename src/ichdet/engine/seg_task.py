"""`SegTask`: the segmentation stage's task (``stage: seg``), in the shape of `SliceTask`.

Training draws balanced slices (half with bleed in their mask, each label an equal share of those
with ``data.seg_sampling: label``; `ichdet.datasets.seg`), augments
image and mask together and trains `seg_unet` on `seg_loss` (``optim.loss`` dice_ce). Scans take
part only with a mask: the manifest's `mask_path`, or none for a negative scan (all background).

Validation segments every validation scan and reports, per epoch:
    val_dice        mean over the validation scans with bleed in their mask of the Dice of
                    "any bleed" (predicted label > 0 vs mask > 0) on the prepared grid
    val_class_dice  mean over (scan, subtype present in its mask) of that subtype's Dice
    val_loss        the training loss over all validation slices
    val_auc, val_accuracy  of the scan score (kind "segmentation": the largest bleed score of a
                    slice, `bleed_slice_scores`) against the scan labels, accuracy at 0.5
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ichdet.datasets.masks import cohort_masks
from ichdet.datasets.seg import SegDataset, SegIndex
from ichdet.datasets.slices import Key
from ichdet.engine.run import Run
from ichdet.engine.seg_loss import seg_loss
from ichdet.engine.segment import segment_intracranial
from ichdet.errors import InputError
from ichdet.io.masks import UNKNOWN_SUBTYPE
from ichdet.metrics import roc_auc
from ichdet.models.fusion import inference_copy
from ichdet.models.seg_unet import bleed_slice_scores, segment_slices

SEG_LOSS = "dice_ce"


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    total = int(p.sum()) + int(t.sum())
    return float("nan") if total == 0 else 2.0 * int((p & t).sum()) / total


@dataclass
class SegValidation:
    """Validation scans scored: `scores` float64 (N,) scan scores, `labels` int64 (N,) scan labels,
    `dice` {scan_id: any-bleed Dice} of the scans with bleed in their mask, `class_dice`
    [(scan_id, label, Dice)] per subtype present, `loss` the mean slice loss, `seconds_per_scan`."""

    scores: np.ndarray
    labels: np.ndarray
    dice: dict[str, float]
    class_dice: list[tuple[str, int, float]]
    loss: float
    seconds_per_scan: float

    def row(self) -> dict[str, float]:
        """The metrics.csv columns of this validation."""
        y, s = self.labels, self.scores
        two = len(np.unique(y)) == 2
        return {"val_loss": self.loss, "val_accuracy": float(np.mean((s >= 0.5) == (y == 1))) if len(y) else float("nan"),
                "val_auc": roc_auc(y, s) if two else float("nan"),
                "val_dice": float(np.mean(list(self.dice.values()))) if self.dice else float("nan"),
                "val_class_dice": float(np.mean([d for *_, d in self.class_dice])) if self.class_dice else float("nan"),
                "val_n": int(len(y))}


class SegTask:
    """Balanced mask slices of the training split; validation on every validation scan."""

    def __init__(self, run: Run):
        cfg = run.cfg
        self.cohort, self.run = run.cohort, run
        self.train_ids, self.val_ids = run.ids("train"), run.ids("val")
        self.masks = cohort_masks(self.cohort, self.train_ids)
        self.val_masks = cohort_masks(self.cohort, self.val_ids)
        skipped = [s for s in self.train_ids if s not in self.masks]
        if skipped:
            run.log(f"seg: {len(skipped)} positive training scan(s) without mask_path left out")
        self.index = SegIndex.build(self.cohort, self.masks, self.train_ids, cfg.data.cranial_only)
        if self.index.n_pos < 1 or self.index.n_neg < 1:
            raise InputError(f"the training split has {self.index.n_pos} slice(s) with bleed in their mask and "
                             f"{self.index.n_neg} without; the seg stage needs both (does the manifest have "
                             f"mask_path?)", self.cohort.manifest_path)
        if not any(m.any() for m in self.val_masks.values()):
            raise InputError("no validation scan has bleed in its mask; the seg stage chooses its best epoch "
                             "by validation Dice", self.cohort.manifest_path)
        self.loss = SEG_LOSS
        self.dataset = SegDataset(self.cohort, self.masks, self.index, augment=cfg.data.augment, seed=cfg.seed)
        self.n_samples = cfg.optim.steps_per_epoch * cfg.optim.batch_size
        self.seed, self.sampling = cfg.seed, cfg.data.seg_sampling
        run.log(f"seg: bleed slices per label {self.index.label_counts()}, drawn by {self.sampling}")
        self.collate: Callable | None = None  # default: (x (B, 3, S, S), y (B, S, S))
        self.channels_last = cfg.channels_last

    def epoch_keys(self, epoch: int) -> list[Key]:
        return self.index.epoch_keys(self.n_samples, self.seed, epoch, self.sampling)

    def forward(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return model(x), y

    def evaluate(self, model: torch.nn.Module) -> SegValidation:
        """Segment every validation scan (fp32, eval mode) and score it."""
        import time

        t0 = time.perf_counter()
        model.eval()
        net = inference_copy(model, self.channels_last)  # batch norms folded, as predict runs it
        scores, dices, class_dices, loss_sum, n_slices = [], {}, [], 0.0, 0
        for sid in self.val_ids:
            scan = self.cohort[sid]
            probs = segment_intracranial(lambda im: segment_slices(net, im, channels_last=self.channels_last),
                                         scan.image, scan.cranial)  # (6, Z, S, S)
            # predict also sets pixels off the cranial cavity to background (`cranial_cavity`); the cache
            # keeps per-slice flags only, and on synthetic heads no bleed lies there (76 of 109 585
            # voxels on 25 fresh scans), so validation skips it
            scores.append(float(bleed_slice_scores(probs).max()))
            truth = self.val_masks.get(sid)
            if truth is None:
                continue
            y = torch.from_numpy(np.asarray(truth, dtype=np.int64))
            loss_sum += float(seg_loss(torch.log(probs.clamp_min(1e-8)).permute(1, 0, 2, 3), y)) * len(y)
            n_slices += len(y)
            pred = probs.argmax(0).numpy()
            if truth.any():
                dices[sid] = dice(pred > 0, truth > 0)
                for label in (int(v) for v in np.unique(truth) if 0 < v < UNKNOWN_SUBTYPE):
                    class_dices.append((sid, label, dice(pred == label, truth == label)))
        sec = (time.perf_counter() - t0) / max(len(self.val_ids), 1)
        return SegValidation(np.asarray(scores, dtype=np.float64), self.cohort.labels(self.val_ids), dices,
                             class_dices, loss_sum / max(n_slices, 1), sec)

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        return self.evaluate(model).row()


__all__ = ["SEG_LOSS", "SegTask", "SegValidation", "dice"]
