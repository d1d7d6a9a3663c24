"""Whole-scan samples for the scan model (sec. 3.3.2-3.3.3): slice sequences, padding, balance.

Keys and sampling follow `ichdet.datasets.slices`: ``ds[(item, epoch, position)]`` augments
with ``sample_rng(seed, epoch, position)``; `balanced_scan_epoch` draws an epoch's items.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ichdet.datasets.augment import augment_volume_labels, sample_rng
from ichdet.datasets.manifest import SUBTYPES
from ichdet.datasets.prepared import UNKNOWN, PreparedCohort, PreparedScan
from ichdet.datasets.slices import _key, balanced_epoch, check_targets
from ichdet.errors import InputError


def volume_to_sequence(vol: torch.Tensor, context: int = 0) -> torch.Tensor:
    """(C, Z, S, S) -> (Z, C * (2 * context + 1), S, S): per slice z the slices z-k..z+k
    (clamped at the ends), channels slice-major then window, as `stack_context` orders them."""
    c, z = vol.shape[:2]
    seq = vol.transpose(0, 1)  # (Z, C, S, S)
    if context == 0:
        return seq.contiguous()
    idx = torch.arange(z).unsqueeze(1) + torch.arange(-context, context + 1).unsqueeze(0)  # (Z, 2k+1)
    idx = idx.clamp_(0, z - 1)
    return seq[idx].reshape(z, (2 * context + 1) * c, *vol.shape[2:])


class ScanDataset(Dataset):
    """Map-style dataset of whole scans.

    ``ds[(item, epoch, position)]`` -> ``(x, y, scan_id)``: x float32 tensor (Z', C', S, S),
    slice-major (slice 0 most inferior), C' = C * (2 * context + 1); the (C, Z', S, S) volume
    is augmented (when `augment`) with ``augment_volume(sample_rng(seed, epoch, position))``
    before the reordering. y the scan label (int), or with ``targets="subtypes"`` float32 (6,):
    the scan's five subtypes (`PreparedCohort.label_targets`, -1 unknown), then its label.
    ``ds[i]`` is ``ds[(i, 0, i)]``.

    With ``slice_targets=True`` a fourth item, float32 (Z', 6): each slice's `slice_target_rows`
    (five subtypes, then its slice label; -1 unknown), moved by the augmentation as the slices are
    (`augment_volume_labels`, the same draws: x is what it is without them).
    """

    def __init__(self, cohort: PreparedCohort, scan_ids: Sequence[str], context: int = 0, augment: bool = False,
                 seed: int = 0, targets: str = "binary", slice_targets: bool = False, **augment_kw):
        if context < 0:
            raise InputError(f"context must be >= 0 slices, got {context}")
        self.targets = check_targets(targets)
        self.cohort = cohort
        self.scan_ids = list(scan_ids)
        for sid in self.scan_ids:
            cohort.row(sid)  # unknown ids fail now, not in a worker
        self.context = int(context)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.slice_targets = bool(slice_targets)
        self.augment_kw = augment_kw

    def __len__(self) -> int:
        return len(self.scan_ids)

    def labels(self) -> np.ndarray:
        """int64 (N,) labels of the scans, in order (from the manifest; nothing is loaded)."""
        return self.cohort.labels(self.scan_ids)

    def __getitem__(self, key: int | Sequence[int]) -> tuple:
        item, epoch, position = _key(key)
        sid = self.scan_ids[item]
        scan = self.cohort[sid]
        vol = torch.from_numpy(np.array(scan.image, dtype=np.float32))  # a writable copy of the map
        rows = slice_target_rows(scan) if self.slice_targets else None
        if self.augment:  # without slice targets (rows None) this is `augment_volume`
            vol, rows = augment_volume_labels(vol, rows, sample_rng(self.seed, epoch, position), **self.augment_kw)
        if self.targets == "subtypes":
            y = torch.from_numpy(self.cohort.label_targets([sid])[0].astype(np.float32))
        else:
            y = int(scan.label)
        if rows is None:
            return volume_to_sequence(vol, self.context), y, sid
        return volume_to_sequence(vol, self.context), y, sid, torch.from_numpy(rows.astype(np.float32))


def slice_target_rows(scan: PreparedScan) -> np.ndarray:
    """int8 (Z', 6) per-slice targets of a prepared scan, as `SliceDataset` gives one slice's
    subtype targets: the five `slice_subtypes`, then the slice label ("any"); -1 unknown. Under the
    2x2x2 filter these are the merged slices' labels (`align_slice_labels`: a merged slice bleeds
    when one of its source slices does)."""
    labels = np.asarray(scan.slice_labels, dtype=np.int8)
    subtypes = (np.full((labels.shape[0], len(SUBTYPES)), UNKNOWN, dtype=np.int8) if scan.slice_subtypes is None
                else np.asarray(scan.slice_subtypes, dtype=np.int8))
    return np.concatenate([subtypes, labels[:, None]], axis=1)


def collate_scans(batch: Sequence[tuple]) -> tuple:
    """[(x (Z_i, C, S, S), y, scan_id)] -> (x (B, Zmax, C, S, S) zero-padded after each scan's
    last slice, lengths int64 (B,), y int64 (B,) (or float32 (B, L) of subtype targets), scan_ids).
    Samples with slice targets (Z_i, T) (``ScanDataset(slice_targets=True)``) add a fifth item,
    float32 (B, Zmax, T), -1 (unknown) on the padding."""
    if not batch:
        raise InputError("collate_scans got an empty batch")
    lengths = torch.tensor([b[0].shape[0] for b in batch], dtype=torch.long)
    first = batch[0][0]
    x = first.new_zeros((len(batch), int(lengths.max()), *first.shape[1:]))
    for i, (seq, *_) in enumerate(batch):
        if seq.shape[1:] != first.shape[1:]:
            raise InputError(f"collate_scans: scan {batch[i][2]!r} has slices of shape {tuple(seq.shape[1:])}, "
                             f"expected {tuple(first.shape[1:])}")
        x[i, :seq.shape[0]] = seq
    if isinstance(batch[0][1], torch.Tensor):
        y = torch.stack([b[1] for b in batch])
    else:
        y = torch.tensor([int(b[1]) for b in batch], dtype=torch.long)
    if len(batch[0]) < 4:
        return x, lengths, y, [b[2] for b in batch]
    rows = torch.full((len(batch), int(lengths.max()), batch[0][3].shape[1]), float(UNKNOWN))
    for i, b in enumerate(batch):
        rows[i, :b[3].shape[0]] = b[3]
    return x, lengths, y, [b[2] for b in batch], rows


def balanced_scan_epoch(labels: Sequence[int] | np.ndarray, n_samples: int, seed: int, epoch: int) -> np.ndarray:
    """int64 (n_samples,) scan positions: n_samples // 2 drawn with replacement from the
    positive scans, the rest from the negative ones, shuffled; seeded by (seed, epoch).
    Feed ``epoch_keys(result, epoch)`` to a `ScanDataset`."""
    labels = np.asarray(labels)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    plan = balanced_epoch(len(pos), len(neg), n_samples, seed, epoch)
    return np.where(plan[:, 0] == 1, pos[np.minimum(plan[:, 1], max(len(pos) - 1, 0))],
                    neg[np.minimum(plan[:, 1], max(len(neg) - 1, 0))]).astype(np.int64)


__all__ = ["ScanDataset", "balanced_scan_epoch", "collate_scans", "slice_target_rows", "volume_to_sequence"]
