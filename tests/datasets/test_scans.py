"""Scan sequences for the scan model: shapes, context, augmentation keys, padding, balance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ichdet.datasets.prepared import PreparedCohort
from ichdet.datasets.manifest import read_slice_labels
from ichdet.datasets.scans import ScanDataset, balanced_scan_epoch, collate_scans, slice_target_rows, volume_to_sequence
from ichdet.datasets.slices import epoch_keys, stack_context
from ichdet.errors import InputError
from ichdet.preprocess import PrepSpec

SPEC_Z = PrepSpec(windows=("brain", "subdural"), size=32, z_max_filter=True)


@pytest.fixture(scope="module")
def cohort(cohort_manifest: Path) -> PreparedCohort:
    return PreparedCohort(cohort_manifest, SPEC_Z)


def test_items_are_slice_major_sequences_with_context(cohort: PreparedCohort) -> None:
    ds = ScanDataset(cohort, cohort.scan_ids(), context=1)
    x, y, sid = ds[1]
    scan = cohort[sid]
    assert x.shape == (15, 6, 32, 32) and x.dtype == torch.float32
    assert (y, sid) == (scan.label, "synth1_00001")
    for z in (0, 7, 14):
        np.testing.assert_array_equal(x[z].numpy(), stack_context(scan.image, z, 1))
    plain, _, _ = ScanDataset(cohort, [sid])[0]
    np.testing.assert_array_equal(plain.numpy(), np.asarray(scan.image).transpose(1, 0, 2, 3))
    assert ds.labels().tolist() == [r.label for r in cohort.rows]


def test_volume_to_sequence_clamps_at_ends() -> None:
    vol = torch.arange(4.0).reshape(1, 4, 1, 1).repeat(2, 1, 1, 1)
    vol[1] += 100
    seq = volume_to_sequence(vol, context=1)
    assert seq.shape == (4, 6, 1, 1)
    assert seq[0, :, 0, 0].tolist() == [0, 100, 0, 100, 1, 101]
    assert seq[3, :, 0, 0].tolist() == [2, 102, 3, 103, 3, 103]


def test_augmentation_depends_only_on_the_key(cohort: PreparedCohort) -> None:
    ds = ScanDataset(cohort, cohort.scan_ids()[:2], augment=True, seed=5)
    assert torch.equal(ds[(0, 2, 3)][0], ds[(0, 2, 3)][0])
    outs = [ds[(0, 0, p)][0] for p in range(8)]
    assert any(not torch.equal(o, outs[0]) for o in outs)
    assert all(o.shape == (15, 2, 32, 32) and 0 <= float(o.min()) and float(o.max()) <= 1 for o in outs)
    np.testing.assert_array_equal(ScanDataset(cohort, ds.scan_ids[:1])[0][0].numpy(),
                                  np.asarray(cohort[ds.scan_ids[0]].image).transpose(1, 0, 2, 3))


def test_collate_pads_at_the_end_and_reports_lengths() -> None:
    a = torch.ones(3, 2, 4, 4)
    b = torch.full((5, 2, 4, 4), 2.0)
    x, lengths, y, ids = collate_scans([(a, 1, "a"), (b, 0, "b")])
    assert x.shape == (2, 5, 2, 4, 4) and lengths.tolist() == [3, 5] and lengths.dtype == torch.long
    assert y.tolist() == [1, 0] and y.dtype == torch.long and ids == ["a", "b"]
    assert torch.equal(x[0, :3], a) and x[0, 3:].abs().sum() == 0 and torch.equal(x[1], b)
    with pytest.raises(InputError, match=r"scan 'c' has slices of shape \(2, 8, 8\), expected \(2, 4, 4\)"):
        collate_scans([(a, 1, "a"), (torch.zeros(2, 2, 8, 8), 0, "c")])


def test_slice_targets_are_the_merged_slice_labels_and_follow_augmentation(cohort: PreparedCohort,
                                                                             cohort_manifest: Path) -> None:
    """With slice_targets each scan brings (Z', 6) rows: five subtypes, then the slice label of the
    2x2x2-merged slice (1 when either source slice bleeds); x is the same as without them."""
    source = read_slice_labels(cohort_manifest.parent / "slice_labels.csv")
    positive = next(s for s in cohort.scan_ids() if cohort.row(s).label == 1)
    ds = ScanDataset(cohort, [positive], slice_targets=True)
    x, y, sid, rows = ds[0]
    assert rows.shape == (15, 6) and rows.dtype == torch.float32 and y == 1
    by_z = {sl.slice_index: sl.label for sl in source[sid]}  # 30 source slices
    merged = [max(by_z[2 * z], by_z[2 * z + 1]) for z in range(15)]
    assert rows[:, 5].tolist() == merged and 0 < sum(merged) < 15
    np.testing.assert_array_equal(rows[:, :5].numpy(), cohort[sid].slice_subtypes)
    assert ((rows[:, :5].max(1).values == 1) == (rows[:, 5] == 1)).all()  # a slice bleeds when a subtype does
    assert torch.equal(x, ScanDataset(cohort, [positive])[0][0])
    np.testing.assert_array_equal(slice_target_rows(cohort[sid]), rows.numpy())
    aug = ScanDataset(cohort, [positive], augment=True, seed=5, slice_targets=True)
    plain = ScanDataset(cohort, [positive], augment=True, seed=5)
    for p in range(12):  # same volume as without targets; targets kept, moved or unknown
        xa, _, _, ra = aug[(0, 0, p)]
        assert torch.equal(xa, plain[(0, 0, p)][0])
        known = ra[:, 5] >= 0
        assert (ra[:, 5] == -1).all() or set(ra[known, 5].tolist()) <= {0.0, 1.0}
    # collate pads the rows with -1 after each scan's last slice
    a = (torch.ones(3, 1, 4, 4), 1, "a", torch.tensor([[0.0] * 5 + [1.0]] * 3))
    b = (torch.ones(5, 1, 4, 4), 0, "b", torch.zeros(5, 6))
    x, lengths, y, ids, st = collate_scans([a, b])
    assert st.shape == (2, 5, 6) and lengths.tolist() == [3, 5] and ids == ["a", "b"]
    assert st[0, :3, 5].tolist() == [1.0] * 3 and (st[0, 3:] == -1).all() and (st[1] == 0).all()


def test_balanced_scan_epoch_and_loader(cohort: PreparedCohort) -> None:
    labels = np.array([0, 1, 0, 0, 0, 1, 0])
    items = balanced_scan_epoch(labels, 40, seed=1, epoch=0)
    assert items.shape == (40,) and labels[items].sum() == 20
    assert set(items[labels[items] == 1].tolist()) == {1, 5}
    assert np.array_equal(items, balanced_scan_epoch(labels, 40, seed=1, epoch=0))
    assert not np.array_equal(items, balanced_scan_epoch(labels, 40, seed=1, epoch=1))
    ds = ScanDataset(cohort, cohort.scan_ids(), augment=True)
    keys = epoch_keys(balanced_scan_epoch(ds.labels(), 4, seed=0, epoch=0), epoch=0)
    x, lengths, y, ids = next(iter(DataLoader(ds, batch_sampler=[keys], collate_fn=collate_scans)))
    assert x.shape == (4, 15, 2, 32, 32) and y.sum() == 2 and lengths.tolist() == [15] * 4
    with pytest.raises(InputError, match="not in the manifest"):
        ScanDataset(cohort, ["nope"])
