"""Segmentation slice sampling (`SegIndex`) and the joint image-mask augmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ichdet.datasets.seg import SegIndex, augment_pair
from ichdet.errors import InputError


def _masks() -> dict[str, np.ndarray]:
    """Scan a: 8 slices with subdural (5), one also with intraventricular (3); scan b: 1 slice of
    intraventricular only, 3 without bleed; scan c (negative): 4 slices without bleed."""
    a = np.zeros((9, 4, 4), np.uint8)
    a[:8, 0, 0] = 5
    a[7, 1, 1] = 3
    b = np.zeros((4, 4, 4), np.uint8)
    b[2, 2, 2] = 3
    return {"a": a, "b": b, "c": np.zeros((4, 4, 4), np.uint8)}


def test_index_records_the_labels_of_each_bleed_slice():
    index = SegIndex.build(None, _masks(), ["a", "b", "c"], cranial_only=False)
    assert index.n_pos == 9 and index.n_neg == 1 + 3 + 4
    assert index.entries[7].labels == (3, 5) and index.entries[0].labels == (5,)
    assert index.entries[8][:3] == ("b", 2, True) and index.entries[8].labels == (3,)
    assert all(e.labels == () for e in index.entries[9:])
    assert index.label_counts() == {3: 2, 5: 8}


def test_label_sampling_gives_every_label_the_same_share():
    index = SegIndex.build(None, _masks(), ["a", "b", "c"], cranial_only=False)
    p = index.pos_weights("label")
    # label 3 on 2 slices, label 5 on 8: a slice with 5 only 1/(2*8), b's slice 1/(2*2), a[7] both
    np.testing.assert_allclose(p[:7], 1 / 16)
    np.testing.assert_allclose(p[7], 1 / 16 + 1 / 4)
    np.testing.assert_allclose(p[8], 1 / 4)
    assert p.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(index.pos_weights("slice"), 1 / 9)

    keys = index.epoch_keys(20000, seed=3, epoch=1)
    items = np.array([k[0] for k in keys])
    pos = items[items < index.n_pos]
    assert len(pos) == 10000 and (items >= index.n_pos).sum() == 10000
    has = {lab: np.isin(pos, [i for i, e in enumerate(index.entries[:9]) if lab in e.labels]).mean() for lab in (3, 5)}
    # half the draws choose label 3 (then a[7] or b's slice), half label 5 (then a[7] one time in 8)
    assert has[3] == pytest.approx(0.5 + 0.5 / 8, abs=0.02)  # by slice: 2 of 9 slices, 22%
    assert has[5] == pytest.approx(0.5 + 0.5 / 2, abs=0.02)
    uniform = np.array([k[0] for k in index.epoch_keys(20000, seed=3, epoch=1, by="slice")])
    assert np.isin(uniform[uniform < 9], [7, 8]).mean() == pytest.approx(2 / 9, abs=0.02)


def test_epochs_are_reproducible_and_differ():
    index = SegIndex.build(None, _masks(), ["a", "b", "c"], cranial_only=False)
    assert index.epoch_keys(64, seed=0, epoch=2) == index.epoch_keys(64, seed=0, epoch=2)
    assert index.epoch_keys(64, seed=0, epoch=2) != index.epoch_keys(64, seed=0, epoch=3)
    assert [k[1:] for k in index.epoch_keys(8, 0, 5)] == [(5, p) for p in range(8)]


def test_unknown_sampling_is_refused():
    index = SegIndex.build(None, _masks(), ["a"], cranial_only=False)
    with pytest.raises(InputError, match="bleed-slice sampling must be one of label, slice, got 'scan'"):
        index.epoch_keys(8, 0, 0, by="scan")


def test_augment_pair_moves_the_mask_with_the_image():
    img = torch.zeros(3, 32, 32)
    img[:, 4:10, 20:26] = 1.0
    mask = (img[0] > 0).to(torch.int64) * 4
    for seed in range(40):
        x, y = augment_pair(img, mask, np.random.default_rng(seed))
        assert y.dtype == torch.int64 and set(torch.unique(y).tolist()) <= {0, 4}
        bright, labelled = x[0] > 0.5, y > 0
        # labels stay where the image is bright (up to the edge pixels of a rotation)
        assert (bright & labelled).sum() >= 0.8 * labelled.sum()
        assert (bright ^ labelled).sum() <= 0.3 * max(int(labelled.sum()), 1)
