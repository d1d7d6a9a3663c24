"""Slice samples for the slice CNN (sec. 3.3.1 and the 2D experiments), and epoch sampling.

The sampling contract, shared with `scans.py`:

* An epoch is a list of **keys** ``(item, epoch, position)``: `item` indexes the dataset's
  entries, `position` is the sample's place in the epoch (0..n-1). The dataset draws the
  sample's augmentation from ``sample_rng(seed, epoch, position)`` and nothing else.
* `balanced_epoch` / `SliceIndex.epoch_keys` draw the epoch from a generator seeded by
  (seed, epoch): equal numbers of positives and negatives, with replacement, shuffled.
* Cut the key list into global batches of B consecutive keys; under DDP, rank r takes
  ``shard(batch, r, world_size)`` = ``batch[r::world_size]``. Since augmentation keys are the
  global positions, N processes see exactly the samples (and augmentations) one process
  would; resuming at batch k means starting at key k * B.

Use the keys with a DataLoader as ``batch_sampler=[keys[i:i + B] for i in range(0, n, B)]``
(or their shards), or ``sampler=keys`` with ``batch_size=B``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from ichdet.datasets.augment import augment_slice, sample_rng
from ichdet.datasets.manifest import LABEL_MODES
from ichdet.datasets.prepared import PreparedCohort
from ichdet.errors import InputError

SAMPLING_STREAM = 1  # spawn key of the epoch-sampling generator (apart from per-sample augmentation)
VALIDATION_SAMPLES = 500  # the paper's validation set of randomly selected slices

Key = tuple[int, int, int]  # (item, epoch, position)
T = TypeVar("T")


class SliceEntry(NamedTuple):
    scan_id: str
    z: int  # slice index in the prepared image (after any z max filter)
    label: int


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator that draws epoch `epoch`'s samples (independent of every `sample_rng`)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)], spawn_key=(SAMPLING_STREAM,)))


def balanced_epoch(n_pos: int, n_neg: int, n_samples: int, seed: int, epoch: int) -> np.ndarray:
    """int64 (n_samples, 2) rows ``(is_pos, idx)``: n_samples // 2 positives drawn with
    replacement from range(n_pos), the rest negatives from range(n_neg), in shuffled order."""
    if n_pos < 1 or n_neg < 1:
        raise InputError(f"cannot balance an epoch with {n_pos} positive and {n_neg} negative sample(s); "
                         "need at least one of each")
    if n_samples < 0:
        raise InputError(f"n_samples must be >= 0, got {n_samples}")
    rng = epoch_rng(seed, epoch)
    k = n_samples // 2
    is_pos = np.concatenate([np.ones(k, np.int64), np.zeros(n_samples - k, np.int64)])
    idx = np.concatenate([rng.integers(0, n_pos, k), rng.integers(0, n_neg, n_samples - k)]).astype(np.int64)
    order = rng.permutation(n_samples)
    return np.stack([is_pos[order], idx[order]], axis=1)


def epoch_keys(items: Sequence[int] | np.ndarray, epoch: int) -> list[Key]:
    """Keys ``(item, epoch, position)`` for an epoch's items in order."""
    return [(int(i), int(epoch), p) for p, i in enumerate(items)]


def shard(batch: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank `rank`'s part of a global batch: positions rank, rank + world_size, ...
    The union over ranks is the batch; keys keep their global positions."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    return list(batch[rank::world_size])


@dataclass
class SliceIndex:
    """Usable slices of some scans: ``entries[:n_pos]`` positives, ``entries[n_pos:]`` negatives."""

    entries: list[SliceEntry]
    n_pos: int

    @property
    def n_neg(self) -> int:
        return len(self.entries) - self.n_pos

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def build(cls, cohort: PreparedCohort, scan_ids: Sequence[str] | None = None, *,
              splits: Mapping[str, str] | None = None, split: str | None = None, cranial_only: bool = True,
              negatives_from_negative_scans: bool = True) -> SliceIndex:
        """Index the slices of `scan_ids` (default: ``cohort.scan_ids(split, splits)``).

        Positives: slices labelled 1. Negatives: slices labelled 0, only from scans labelled 0
        when `negatives_from_negative_scans` (the paper: a positive scan's unlabelled-looking
        slice may still show blood). Unknown (-1) slices are never used; with `cranial_only`
        only slices showing the cranial cavity are. Loads (prepares) each scan.
        """
        ids = list(scan_ids) if scan_ids is not None else cohort.scan_ids(split, splits)
        pos: list[SliceEntry] = []
        neg: list[SliceEntry] = []
        for sid in ids:
            scan = cohort[sid]
            use = np.asarray(scan.cranial, bool) if cranial_only else np.ones(scan.n_slices, bool)
            labels = np.asarray(scan.slice_labels)
            pos += [SliceEntry(sid, int(z), 1) for z in np.flatnonzero(use & (labels == 1))]
            if not (negatives_from_negative_scans and scan.label != 0):
                neg += [SliceEntry(sid, int(z), 0) for z in np.flatnonzero(use & (labels == 0))]
        return cls(pos + neg, len(pos))

    def item(self, is_pos: int, idx: int) -> int:
        """Entry index of the idx-th positive (is_pos 1) or negative (is_pos 0)."""
        return int(idx) if is_pos else self.n_pos + int(idx)

    def epoch_keys(self, n_samples: int, seed: int, epoch: int) -> list[Key]:
        """A balanced epoch of `n_samples` keys ``(entry index, epoch, position)``."""
        plan = balanced_epoch(self.n_pos, self.n_neg, n_samples, seed, epoch)
        return epoch_keys([self.item(p, i) for p, i in plan], epoch)


def validation_sample(index: SliceIndex, n: int = VALIDATION_SAMPLES, seed: int = 0) -> list[int]:
    """A fixed balanced sample of entry indices without replacement: min(n // 2, n_pos, n_neg)
    positives and as many negatives (fewer than `n` when fewer exist), shuffled."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed)], spawn_key=(SAMPLING_STREAM, 1)))
    k = min(int(n) // 2, index.n_pos, index.n_neg)
    pos = rng.choice(index.n_pos, size=k, replace=False)
    neg = index.n_pos + rng.choice(index.n_neg, size=k, replace=False)
    both = np.concatenate([pos, neg])
    return [int(i) for i in both[rng.permutation(both.size)]]


def context_slices(z: int, n_slices: int, context: int) -> np.ndarray:
    """Slice indices z - context .. z + context, clamped to 0..n_slices - 1."""
    return np.clip(np.arange(z - context, z + context + 1), 0, n_slices - 1)


def stack_context(image: np.ndarray, z: int, context: int) -> np.ndarray:
    """(C, Z, S, S) -> float32 (C * (2 * context + 1), S, S): slices z-k..z+k (clamped at the
    volume ends), channel order slice-major then window: [z-k w0, z-k w1, ..., z+k w(C-1)]."""
    zz = context_slices(z, image.shape[1], context)
    block = np.asarray(image[:, zz], dtype=np.float32)  # (C, 2k+1, S, S), a copy
    return np.ascontiguousarray(block.transpose(1, 0, 2, 3).reshape(-1, *image.shape[2:]))


def _key(key: int | Sequence[int]) -> Key:
    if isinstance(key, (int, np.integer)):
        return int(key), 0, int(key)
    item, epoch, position = key
    return int(item), int(epoch), int(position)




def check_targets(targets: str) -> str:
    if targets not in LABEL_MODES:
        raise InputError(f"targets must be one of {', '.join(LABEL_MODES)}, got {targets!r}")
    return targets


class SliceDataset(Dataset):
    """Map-style dataset of slice samples.

    ``ds[(item, epoch, position)]`` -> ``(x, y)``: x float32 tensor (C * (2 * context + 1), S, S)
    from ``entries[item]``, augmented (when `augment`) with ``sample_rng(seed, epoch, position)``;
    y the slice label (int), or with ``targets="subtypes"`` float32 (6,): the slice's five subtype
    targets (`PreparedScan.slice_subtypes`, -1 unknown), then its label ("any").
    ``ds[i]`` is ``ds[(i, 0, i)]``. len() is the number of entries.
    """

    def __init__(self, cohort: PreparedCohort, entries: Sequence[SliceEntry] | SliceIndex, context: int = 0,
                 augment: bool = False, seed: int = 0, targets: str = "binary", **augment_kw):
        if context < 0:
            raise InputError(f"context must be >= 0 slices, got {context}")
        self.targets = check_targets(targets)
        self.cohort = cohort
        self.entries = list(entries.entries if isinstance(entries, SliceIndex) else entries)
        self.context = int(context)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.augment_kw = augment_kw

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: int | Sequence[int]) -> tuple[torch.Tensor, int | torch.Tensor]:
        item, epoch, position = _key(key)
        sid, z, y = self.entries[item]
        scan = self.cohort[sid]
        x = torch.from_numpy(stack_context(scan.image, z, self.context))
        if self.augment:
            x = augment_slice(x, sample_rng(self.seed, epoch, position), **self.augment_kw)
        if self.targets == "subtypes":
            return x, torch.tensor([*scan.slice_subtypes[z].tolist(), int(y)], dtype=torch.float32)
        return x, int(y)


__all__ = ["Key", "SAMPLING_STREAM", "SliceDataset", "SliceEntry", "SliceIndex", "VALIDATION_SAMPLES",
           "balanced_epoch", "check_targets", "context_slices", "epoch_keys", "epoch_rng", "shard", "stack_context",
           "validation_sample"]
