"""Haemorrhages: density, place and shape per subtype; difficulty; mimics in negatives."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ichdet.datasets.manifest import SUBTYPES
from ichdet.synth.head import CSF_TISSUES, PARENCHYMA, Tissue
from ichdet.synth.scan import slice_subtypes, synthesize

BRAIN = PARENCHYMA + CSF_TISSUES + (Tissue.FALX,)


@pytest.fixture(scope="module")
def bleeds():
    """One easy (large, bright) scan per subtype at ~0.95 mm pixels."""
    return {st: synthesize([21, i], size=256, n_slices=26, slice_thickness=6.0, difficulty=0.05, subtypes=[st])
            for i, st in enumerate(SUBTYPES)}


def _core(mask: np.ndarray) -> np.ndarray:
    core = ndimage.binary_erosion(mask, np.ones((1, 3, 3), bool))
    return core if core.sum() >= 20 else mask


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_bleed_is_acute_blood_and_labelled(bleeds, subtype):
    s = bleeds[subtype]
    m = s.mask == SUBTYPES.index(subtype) + 1
    assert m.sum() > 20, f"{subtype} mask has {m.sum()} voxels"
    mean = float(s.volume.hu[_core(m)].mean())
    low = 45.0 if subtype == "subarachnoid" else 50.0  # thin sulcal blood is partial-volumed
    assert low <= mean <= 90.0, f"{subtype} mean {mean:.1f} HU"
    assert s.meta["label"] == 1 and s.meta["subtypes"][subtype] == 1
    assert s.meta["subtype_volume_ml"][subtype] > 0
    labelled = np.array(s.meta["slice_labels"], bool)
    assert np.array_equal(labelled, slice_subtypes(s.mask))
    assert np.array_equal(labelled.any(axis=1), s.mask.any(axis=(1, 2)))


@pytest.mark.parametrize("subtype", ["epidural", "subdural"])
def test_extra_axial_blood_hugs_the_inner_table(bleeds, subtype):
    s = bleeds[subtype]
    m = s.mask > 0
    bone = s.tissue == Tissue.BONE
    near_bone = ndimage.binary_dilation(bone, np.ones((1, 7, 7), bool))  # within 3 pixels (~3 mm)
    slices = np.flatnonzero(m.any(axis=(1, 2)))
    touching = [(m[k] & near_bone[k]).any() for k in slices]
    assert np.mean(touching) >= 0.8, f"{subtype} touches the skull on {np.sum(touching)}/{len(slices)} slices"
    assert (m & near_bone).sum() > 0.05 * m.sum()  # a broad face against the skull
    assert np.isin(s.tissue[m], BRAIN).mean() > 0.95  # inside the cranial cavity, not in bone


def test_epidural_is_a_compact_lens(bleeds):
    m = bleeds["epidural"].mask > 0
    k = int(np.argmax(m.sum(axis=(1, 2))))
    rows, cols = np.nonzero(m[k])
    extent = max(np.ptp(rows), np.ptp(cols)) + 1
    thickness = min(np.ptp(rows), np.ptp(cols)) + 1
    assert thickness >= 4 and extent < 120  # thick and compact (pixels of ~0.95 mm)


def test_intraventricular_blood_lies_in_the_ventricles_dependently(bleeds):
    s = bleeds["intraventricular"]
    m = s.mask > 0
    assert np.isin(s.tissue[m], (Tissue.VENTRICLE, Tissue.VENTRICLE_MID)).mean() > 0.97
    vent_rows = np.nonzero(s.tissue == Tissue.VENTRICLE)[1]
    assert np.nonzero(m)[1].mean() > vent_rows.mean()  # posterior = larger row in a supine patient


def test_intraparenchymal_blood_is_in_the_brain(bleeds):
    s = bleeds["intraparenchymal"]
    m = s.mask > 0
    assert np.isin(s.tissue[m], BRAIN).mean() > 0.95
    assert np.isin(s.tissue[m], PARENCHYMA).mean() > 0.6


def test_subarachnoid_blood_fills_csf_spaces(bleeds):
    s = bleeds["subarachnoid"]
    assert np.isin(s.tissue[s.mask > 0], (Tissue.CSF, Tissue.CISTERN)).all()


def test_large_bleeds_have_mass_effect():
    s = synthesize([8, 0], size=64, n_slices=12, slice_thickness=10.0, difficulty=0.0,
                   subtypes=["intraparenchymal", "subdural"])
    assert any(b["mass_effect_mm"] > 0 for b in s.meta["bleeds"]) or \
        max(b["size_mm"] for b in s.meta["bleeds"]) < 15


def test_harder_means_smaller_bleeds():
    def mean_ml(d: float) -> float:
        vols = [sum(synthesize([9, i], size=64, n_slices=12, slice_thickness=10.0, difficulty=d,
                               positive=True).meta["subtype_volume_ml"].values()) for i in range(10)]
        return float(np.mean(vols))
    assert mean_ml(0.9) < 0.5 * mean_ml(0.1)


def test_negatives_have_no_blood_but_may_have_mimics():
    scans = [synthesize([10, i], size=64, n_slices=12, slice_thickness=10.0, difficulty=1.0, positive=False)
             for i in range(4)]
    assert all(s.meta["label"] == 0 and not s.mask.any() for s in scans)
    assert all(s.meta["mimics"] for s in scans)
    assert any(any(n.startswith("calcification") for n in s.meta["mimics"]) for s in scans)


def _hyperdense_per_slice(hu: np.ndarray) -> np.ndarray:
    """A naive detector: voxels of 58-95 HU (3x3 mean) away from bone, counted per slice."""
    bone = ndimage.binary_dilation(hu > 300, np.ones((1, 5, 5), bool))
    smooth = ndimage.uniform_filter(hu, (1, 3, 3))
    return ((smooth > 58) & (smooth < 95) & ~bone).sum(axis=(1, 2))


def test_moderate_difficulty_defeats_a_threshold_max_baseline():
    from sklearn.metrics import roc_auc_score

    def auc(d: float) -> float:
        labels, scores = [], []
        for i in range(24):
            s = synthesize([12, i], size=128, n_slices=12, slice_thickness=10.0, difficulty=d, positive=i % 2 == 0)
            labels.append(s.meta["label"])
            scores.append(_hyperdense_per_slice(s.volume.hu).max())  # scan score = max over slices
        return float(roc_auc_score(labels, scores))

    easy, moderate = auc(0.1), auc(0.5)
    assert easy > 0.7 and moderate < 0.9 and easy > moderate, (easy, moderate)
