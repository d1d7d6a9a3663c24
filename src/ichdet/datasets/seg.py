"""Slice samples for segmentation: a prepared slice and its label mask, augmented together.

Sampling follows `ichdet.datasets.slices` (keys ``(item, epoch, position)``, balanced epochs from
``(seed, epoch)``, augmentation from ``sample_rng(seed, epoch, position)``): half of every epoch
comes from slices whose mask holds bleed, half from slices without (of positive and negative
scans alike: a mask says where there is no blood), so bleed slices, a few per scan, are well
represented. Within the bleed half, ``by="label"`` gives every label that occurs (the five
subtypes, and "bleed of unknown subtype") an equal share: a draw picks a label, then one of the
slices that hold it (nnU-Net's per-class foreground oversampling), so a subtype on few slices (the
cohort's intraventricular layers) is seen as often as the subdural crescents on many; ``by="slice"``
draws bleed slices uniformly.

`augment_pair` applies `augment_slice`'s transforms (same draws, same probabilities) to the image
and its mask: the mask is mirrored and shifted with it and rotated with nearest interpolation,
so labels stay labels; what is shifted or rotated in is background.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import torch
from monai.transforms import Rotate
from torch.utils.data import Dataset

from ichdet.datasets.augment import MAX_ANGLE_DEG, MAX_SHIFT_PX, REF_SIZE, _clamp_like, mirror, rotate, sample_rng, scaled_shift, shift
from ichdet.datasets.prepared import PreparedCohort
from ichdet.datasets.slices import SAMPLING_STREAM, Key, _key, balanced_epoch, epoch_keys
from ichdet.errors import InputError


SAMPLING = ("label", "slice")


def _label_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of epoch `epoch`'s label-balanced bleed-slice draws (apart from `epoch_rng`)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)], spawn_key=(SAMPLING_STREAM, 2)))


class SegEntry(NamedTuple):
    scan_id: str
    z: int
    bleed: bool  # the slice's mask holds a bleed label
    labels: tuple[int, ...] = ()  # the bleed labels (1..6) the slice's mask holds


@dataclass
class SegIndex:
    """Slices with a mask: ``entries[:n_pos]`` hold bleed, ``entries[n_pos:]`` do not."""

    entries: list[SegEntry]
    n_pos: int

    @property
    def n_neg(self) -> int:
        return len(self.entries) - self.n_pos

    @classmethod
    def build(cls, cohort: PreparedCohort, masks: Mapping[str, np.ndarray], scan_ids: Sequence[str],
              cranial_only: bool = True) -> SegIndex:
        """Index the slices of `scan_ids` that have a mask in `masks`; slices without bleed count
        only where they show the cranial cavity when `cranial_only`."""
        pos: list[SegEntry] = []
        neg: list[SegEntry] = []
        for sid in scan_ids:
            if sid not in masks:
                continue
            flat = np.asarray(masks[sid]).reshape(masks[sid].shape[0], -1)
            bleed = flat.max(axis=1) > 0
            use = np.asarray(cohort[sid].cranial, bool) if cranial_only else np.ones(bleed.shape[0], bool)
            pos += [SegEntry(sid, int(z), True, tuple(int(v) for v in np.unique(flat[z]) if v > 0))
                    for z in np.flatnonzero(bleed)]
            neg += [SegEntry(sid, int(z), False) for z in np.flatnonzero(~bleed & use)]
        return cls(pos + neg, len(pos))

    def label_counts(self) -> dict[int, int]:
        """{bleed label: number of bleed slices that hold it}."""
        counts: dict[int, int] = {}
        for e in self.entries[:self.n_pos]:
            for label in e.labels:
                counts[label] = counts.get(label, 0) + 1
        return dict(sorted(counts.items()))

    def pos_weights(self, by: str = "label") -> np.ndarray:
        """float64 (n_pos,) drawing probabilities of the bleed slices: uniform (``by="slice"``), or
        the sum over the slice's labels of 1 / (labels that occur x slices holding that label)
        (``by="label"``: every label gets the same share of draws)."""
        if by not in SAMPLING:
            raise InputError(f"bleed-slice sampling must be one of {', '.join(SAMPLING)}, got {by!r}")
        if by == "slice" or self.n_pos == 0:
            return np.full(self.n_pos, 1.0 / max(self.n_pos, 1))
        counts = self.label_counts()
        w = np.array([sum(1.0 / counts[label] for label in e.labels) for e in self.entries[:self.n_pos]])
        return w / w.sum()

    def epoch_keys(self, n_samples: int, seed: int, epoch: int, by: str = "label") -> list[Key]:
        """A balanced epoch of `n_samples` keys: half bleed slices (drawn as `pos_weights(by)`
        says), half others, with replacement."""
        plan = balanced_epoch(self.n_pos, self.n_neg, n_samples, seed, epoch)
        if by != "slice":
            p = self.pos_weights(by)
            draws = _label_rng(seed, epoch).choice(self.n_pos, size=len(plan), p=p)
            plan[:, 1] = np.where(plan[:, 0] == 1, draws, plan[:, 1])
        return epoch_keys([int(i) if p else self.n_pos + int(i) for p, i in plan], epoch)


def _rotate_labels(mask: torch.Tensor, degrees: float) -> torch.Tensor:
    """(H, W) labels rotated as `rotate` turns the image, nearest neighbour, 0 outside."""
    rad = np.radians(float(degrees))
    out = Rotate(angle=rad, keep_size=True, mode="nearest", padding_mode="zeros", align_corners=False,
                 dtype=torch.float32)(mask[None].float())
    out = out.as_tensor() if hasattr(out, "as_tensor") else out
    return out[0].round().to(mask.dtype)


def augment_pair(img: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator, max_angle: float = MAX_ANGLE_DEG,
                 max_shift: int = MAX_SHIFT_PX, ref_size: int = REF_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, H, W) image and (H, W) labels -> both transformed alike: original, rotated
    U(-max_angle, max_angle) degrees, mirrored left-right or shifted, each with probability 1/4
    (the draws of `augment_slice`)."""
    if img.ndim != 3 or mask.shape != img.shape[-2:]:
        raise InputError(f"augment_pair expects an image (C, H, W) and labels (H, W), got {tuple(img.shape)} "
                         f"and {tuple(mask.shape)}")
    mode = int(rng.integers(4))
    if mode == 1:
        degrees = rng.uniform(-max_angle, max_angle)
        return _clamp_like(rotate(img, degrees), img), _rotate_labels(mask, degrees)
    if mode == 2:
        return mirror(img), mask.flip(-1)
    if mode == 3:
        m = scaled_shift(max_shift, img.shape[-2], ref_size), scaled_shift(max_shift, img.shape[-1], ref_size)
        d = (int(rng.integers(-m[0], m[0] + 1)), int(rng.integers(-m[1], m[1] + 1)))
        return shift(img, d), shift(mask, d, fill=0)
    return img, mask


class SegDataset(Dataset):
    """``ds[(item, epoch, position)]`` -> (x float32 (C, S, S), y int64 (S, S)): slice ``entries[item]``
    of the prepared image and its labels (0..5, 6 = bleed of unknown subtype), augmented together
    (when `augment`) with ``sample_rng(seed, epoch, position)``."""

    def __init__(self, cohort: PreparedCohort, masks: Mapping[str, np.ndarray], entries: Sequence[SegEntry] | SegIndex,
                 augment: bool = False, seed: int = 0):
        self.cohort, self.masks = cohort, dict(masks)
        self.entries = list(entries.entries if isinstance(entries, SegIndex) else entries)
        self.augment, self.seed = bool(augment), int(seed)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        item, epoch, position = _key(key)
        sid, z = self.entries[item][:2]
        x = torch.from_numpy(np.ascontiguousarray(self.cohort[sid].image[:, z], dtype=np.float32))
        y = torch.from_numpy(np.asarray(self.masks[sid][z], dtype=np.int64))
        if self.augment:
            x, y = augment_pair(x, y, sample_rng(self.seed, epoch, position))
        return x, y


__all__ = ["SAMPLING", "SegDataset", "SegEntry", "SegIndex", "augment_pair"]
