"""Slice samples: which slices are used, balanced epochs, DDP shards, context stacking."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ichdet.datasets.prepared import PreparedCohort
from ichdet.datasets.slices import (
    SliceDataset, SliceEntry, SliceIndex, balanced_epoch, epoch_keys, shard, stack_context, validation_sample,
)
from ichdet.errors import InputError
from ichdet.preprocess import PrepSpec

SPEC = PrepSpec(windows=("brain", "subdural"), size=32)


@pytest.fixture(scope="module")
def cohort(cohort_manifest: Path) -> PreparedCohort:
    return PreparedCohort(cohort_manifest, SPEC)


def test_cranial_only_drops_non_cranial_slices(cohort: PreparedCohort) -> None:
    ids = cohort.scan_ids()
    every = SliceIndex.build(cohort, ids, cranial_only=False)
    cranial = SliceIndex.build(cohort, ids)
    assert all(cohort[e.scan_id].cranial[e.z] for e in cranial.entries)
    dropped = set(every.entries) - set(cranial.entries)
    assert dropped and all(not cohort[e.scan_id].cranial[e.z] for e in dropped)
    assert set(cranial.entries) <= set(every.entries)
    # every usable slice is listed exactly once, with its own label
    for e in every.entries:
        assert cohort[e.scan_id].slice_labels[e.z] == e.label
    assert len(set(every.entries)) == len(every.entries)
    assert every.entries[:every.n_pos] == [e for e in every.entries if e.label == 1]


def test_negatives_only_from_negative_scans(cohort: PreparedCohort) -> None:
    ids = cohort.scan_ids()
    index = SliceIndex.build(cohort, ids)
    assert {cohort[e.scan_id].label for e in index.entries[index.n_pos:]} == {0}
    assert {cohort[e.scan_id].label for e in index.entries[:index.n_pos]} == {1}
    mixed = SliceIndex.build(cohort, ids, negatives_from_negative_scans=False)
    assert mixed.n_pos == index.n_pos
    assert {cohort[e.scan_id].label for e in mixed.entries[mixed.n_pos:]} == {0, 1}
    n_neg = sum(int(((cohort[s].slice_labels == 0) & cohort[s].cranial).sum()) for s in ids if cohort[s].label == 0)
    assert index.n_neg == n_neg


def test_split_selection_and_unknown_slices_unused(cohort_manifest: Path, cohort: PreparedCohort) -> None:
    splits = {s: ("train" if i < 5 else "val") for i, s in enumerate(cohort.scan_ids())}
    val = SliceIndex.build(cohort, splits=splits, split="val")
    assert {e.scan_id for e in val.entries} <= {s for s, v in splits.items() if v == "val"}
    unlabelled = PreparedCohort(cohort_manifest, SPEC, slice_labels_path=None)
    index = SliceIndex.build(unlabelled, negatives_from_negative_scans=False)
    assert index.n_pos == 0  # positive scans without slice labels are all unknown
    assert {unlabelled[e.scan_id].label for e in index.entries} == {0}


def test_balanced_epoch_is_exactly_half_positive_and_reproducible() -> None:
    plan = balanced_epoch(7, 50, 1000, seed=3, epoch=2)
    assert plan.shape == (1000, 2) and plan.dtype == np.int64
    assert plan[:, 0].sum() == 500
    assert plan[plan[:, 0] == 1, 1].max() < 7 and plan[plan[:, 0] == 0, 1].max() < 50
    assert set(plan[plan[:, 0] == 1, 1].tolist()) == set(range(7))  # with replacement: all show up
    assert np.array_equal(plan, balanced_epoch(7, 50, 1000, seed=3, epoch=2))
    assert not np.array_equal(plan, balanced_epoch(7, 50, 1000, seed=3, epoch=3))
    assert 0 < plan[:500, 0].sum() < 500  # shuffled, not positives first
    with pytest.raises(InputError, match="0 positive and 5 negative"):
        balanced_epoch(0, 5, 10, 0, 0)


def test_epoch_keys_point_at_balanced_entries(cohort: PreparedCohort) -> None:
    index = SliceIndex.build(cohort)
    keys = index.epoch_keys(100, seed=0, epoch=4)
    assert [k[2] for k in keys] == list(range(100)) and {k[1] for k in keys} == {4}
    assert sum(index.entries[k[0]].label for k in keys) == 50


def test_shard_union_is_the_global_batch() -> None:
    batch = epoch_keys(range(100, 125), epoch=0)
    parts = [shard(batch, r, 4) for r in range(4)]
    assert sorted(sum(parts, [])) == sorted(batch)
    assert [len(p) for p in parts] == [7, 6, 6, 6]
    assert parts[1][:2] == [batch[1], batch[5]]
    with pytest.raises(InputError, match="rank 4, world_size 4"):
        shard(batch, 4, 4)


def test_shards_see_the_samples_one_process_would(cohort: PreparedCohort) -> None:
    index = SliceIndex.build(cohort)
    ds = SliceDataset(cohort, index, context=1, augment=True, seed=9)
    keys = index.epoch_keys(12, seed=9, epoch=1)
    whole = {k: ds[k] for k in keys}
    for rank in range(3):
        for k in shard(keys, rank, 3):
            x, y = ds[k]
            assert torch.equal(x, whole[k][0]) and y == whole[k][1]


def test_context_stacking_values_at_volume_ends() -> None:
    c, z = 2, 5
    image = (np.arange(z)[None, :, None, None] * 10 + np.arange(c)[:, None, None, None]) * np.ones((c, z, 3, 3))
    first = stack_context(image.astype(np.float32), 0, 2)
    assert first.shape == (10, 3, 3) and first.dtype == np.float32
    assert first[:, 0, 0].tolist() == [0, 1, 0, 1, 0, 1, 10, 11, 20, 21]  # z 0,0,0,1,2; window-minor
    last = stack_context(image.astype(np.float32), 4, 1)
    assert last[:, 0, 0].tolist() == [30, 31, 40, 41, 40, 41]


def test_dataset_items_and_dataloader(cohort: PreparedCohort) -> None:
    index = SliceIndex.build(cohort)
    ds = SliceDataset(cohort, index, context=1)
    e = index.entries[0]
    x, y = ds[0]
    assert x.shape == (6, 32, 32) and x.dtype == torch.float32 and y == e.label == 1
    np.testing.assert_array_equal(x[2:4].numpy(), cohort[e.scan_id].image[:, e.z])  # centre slice
    keys = index.epoch_keys(10, seed=0, epoch=0)
    loader = DataLoader(ds, batch_sampler=[keys[i:i + 4] for i in range(0, 10, 4)])
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    assert torch.cat([b[1] for b in batches]).sum() == 5
    aug = SliceDataset(cohort, [SliceEntry(e.scan_id, e.z, 1)], augment=True, seed=1)
    assert torch.equal(aug[(0, 3, 7)][0], aug[(0, 3, 7)][0])
    outs = [aug[(0, 0, p)][0] for p in range(12)]
    assert any(not torch.equal(o, outs[0]) for o in outs)
    with pytest.raises(InputError, match="context must be >= 0"):
        SliceDataset(cohort, index, context=-1)


def test_validation_sample_is_fixed_and_balanced(cohort: PreparedCohort) -> None:
    index = SliceIndex.build(cohort)
    sample = validation_sample(index, n=20, seed=0)
    assert sample == validation_sample(index, n=20, seed=0)
    assert len(sample) == 20 and len(set(sample)) == 20
    assert sum(index.entries[i].label for i in sample) == 10
    small = validation_sample(index)  # 500 asked, fewer exist: as many positives as negatives
    assert len(small) == 2 * min(index.n_pos, index.n_neg, 250)
