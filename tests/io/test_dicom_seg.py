"""DICOM Segmentation output: written from a label mask, read back with pydicom and highdicom, and the
frames checked to land on the right source slices (synthetic series in shuffled file order, a tilted
series, the real tilted CQ500 series), validated with dciodvfy."""
from __future__ import annotations

import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from ichdet import __version__
from ichdet.datasets.manifest import SUBTYPES
from ichdet.errors import InputError, InputWarning
from ichdet.io import read_dicom_series, write_dicom_series
from ichdet.io.dicom_derived import SUBTYPE_NAMES
from ichdet.io.dicom_seg import frame_of_reference_for, write_dicom_seg
from ichdet.synth.scan import synthesize

from ctfactory import head_like_volume
from dicom_validate import dciodvfy

ALGO = dict(algorithm_name="ichdet-seg-test", algorithm_version="1.2.3")


def seg_to_labels(seg_file: Path, source_files: list[str]) -> np.ndarray:
    """The SEG back as a uint8 (Z, H, W) label mask in `source_files` order, read with pydicom alone.

    Each frame is put on the source slice its Derivation Image Sequence names; its
    ImagePositionPatient must be that slice's, and no (slice, segment) may come twice.
    """
    seg = pydicom.dcmread(seg_file)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in source_files]
    index = {str(h.SOPInstanceUID): k for k, h in enumerate(headers)}
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    labels = np.zeros((len(headers), int(seg.Rows), int(seg.Columns)), np.uint8)
    seen = set()
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        refs = item.DerivationImageSequence[0].SourceImageSequence
        assert len(refs) == 1
        k = index[str(refs[0].ReferencedSOPInstanceUID)]
        np.testing.assert_allclose(np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float),
                                   np.asarray(headers[k].ImagePositionPatient, float), atol=1e-3)
        assert (k, number) not in seen
        seen.add((k, number))
        assert frame.any()  # empty frames are omitted
        assert not labels[k][frame > 0].any()  # segments do not overlap: the mask is a label map
        labels[k][frame > 0] = number
    return labels


def _shuffle_files(folder: Path, seed: int) -> None:
    """Rename the files and renumber InstanceNumber in a random order unrelated to their positions."""
    files = sorted(folder.glob("*.dcm"))
    perm = np.random.default_rng(seed).permutation(len(files))
    for f, p in zip(files, perm):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = int(p) + 1
        ds.save_as(folder / f"S{(int(p) * 7919) % 10007:05d}.dcm")
        f.unlink()


@pytest.fixture(scope="module")
def synth_series(tmp_path_factory):
    """A synthetic head CT with all five subtypes: (Volume read back, truth mask in Volume order)."""
    scan = synthesize(7, size=64, n_slices=10, slice_thickness=5.0, difficulty=0.2, subtypes=SUBTYPES,
                      patient_id="SYN01")
    folder = tmp_path_factory.mktemp("seg_synth") / "series"
    write_dicom_series(scan.volume, folder)
    _shuffle_files(folder, seed=1)
    vol = read_dicom_series(folder)
    np.testing.assert_array_equal(vol.hu, np.rint(scan.volume.hu))  # the reader restored slice order
    names = [Path(s).name for s in vol.source]
    assert names != sorted(names)  # the test is only worth something when name order is not slice order
    return vol, scan.mask


def test_subtype_names_are_the_manifest_subtypes():
    assert SUBTYPE_NAMES == SUBTYPES


def test_synthetic_seg_frames_land_on_their_source_slices(synth_series, tmp_path):
    vol, mask = synth_series
    assert set(np.unique(mask)) == {0, 1, 2, 3, 4, 5}
    out = write_dicom_seg(mask, vol.source, tmp_path / "seg.dcm", **ALGO)
    assert out == tmp_path / "seg.dcm" and [p.name for p in tmp_path.iterdir()] == ["seg.dcm"]  # no temp left

    np.testing.assert_array_equal(seg_to_labels(out, vol.source), mask)

    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == pydicom.uid.SegmentationStorage
    assert ds.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in ds.SegmentSequence] == list(SUBTYPES)
    assert [int(s.SegmentNumber) for s in ds.SegmentSequence] == [1, 2, 3, 4, 5]
    for s, name in zip(ds.SegmentSequence, SUBTYPES):
        cat, typ = s.SegmentedPropertyCategoryCodeSequence[0], s.SegmentedPropertyTypeCodeSequence[0]
        assert (cat.CodeValue, cat.CodingSchemeDesignator) == ("49755003", "SCT")
        assert (typ.CodeValue, typ.CodingSchemeDesignator, typ.CodeMeaning) == ("50960005", "SCT", "Hemorrhage")
        assert s.TrackingID == f"{name} haemorrhage"
        assert s.SegmentAlgorithmType == "AUTOMATIC"
        algo = s.SegmentationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("ichdet-seg-test", "1.2.3")
    n_stored = sum(int((mask[k] == v).any()) for k in range(mask.shape[0]) for v in range(1, 6))
    assert int(ds.NumberOfFrames) == n_stored < 5 * mask.shape[0]  # empty frames omitted
    assert ds.Manufacturer == "ichdet" and ds.SoftwareVersions == f"ichdet {__version__}"
    assert ds.ManufacturerModelName == "ichdet-seg-test" and str(ds.ContentCreatorName) == "ichdet"
    assert ds.StudyInstanceUID == vol.study_uid and ds.PatientID == "SYN01"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == vol.series_uid
    assert ds.SeriesInstanceUID != vol.series_uid

    # highdicom reads it back the same, by source instance
    seg = hd.seg.segread(out)
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in vol.source]
    labels = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(labels, mask)
    assert [d.segment_label for d in (seg.get_segment_description(i) for i in range(1, 6))] == list(SUBTYPES)
    assert seg.get_segment_description(4).segmented_property_type == codes.SCT.Hemorrhage


def test_seg_passes_dciodvfy(synth_series, tmp_path):
    vol, mask = synth_series
    out = write_dicom_seg(mask, vol.source, tmp_path / "seg.dcm", **ALGO)
    errors, _ = dciodvfy(out)
    assert errors == []


def test_tilted_series_made_up_mask(tmp_path):
    vol0 = head_like_volume(z=8, size=32, tilt_deg=12.0)
    folder = tmp_path / "tilted"
    write_dicom_series(vol0, folder)
    _shuffle_files(folder, seed=3)
    vol = read_dicom_series(folder)
    assert vol.gantry_tilt_deg == pytest.approx(12.0, abs=0.01)
    mask = np.zeros(vol.shape, np.uint8)
    mask[1, 4:9, 5:12] = 1
    mask[5, 10:20, 10:14] = 5
    mask[5, 2:4, 2:4] = 3
    mask[7, 0, 0] = 2
    out = write_dicom_seg(mask, vol.source, tmp_path / "seg.dcm", **ALGO)
    np.testing.assert_array_equal(seg_to_labels(out, vol.source), mask)
    assert int(pydicom.dcmread(out, stop_before_pixels=True).NumberOfFrames) == 4


def test_empty_mask_stores_every_frame(synth_series, tmp_path):
    vol, mask = synth_series
    empty = np.zeros_like(mask)
    out = write_dicom_seg(empty, vol.source, tmp_path / "seg.dcm", **ALGO)
    ds = pydicom.dcmread(out)
    assert len(ds.SegmentSequence) == 5
    assert int(ds.NumberOfFrames) == 5 * mask.shape[0]  # DICOM needs a frame; highdicom keeps all, all zero
    assert not ds.pixel_array.any()


def test_mask_shape_must_match_the_series(synth_series, tmp_path):
    vol, mask = synth_series
    with pytest.raises(InputError) as e:
        write_dicom_seg(mask[:-1], vol.source, tmp_path / "seg.dcm", **ALGO)
    assert str(e.value) == (f"{vol.source[0]}: mask shape (9, 64, 64) does not match the series' (10, 64, 64) "
                            "(10 files of 64x64)")
    with pytest.raises(InputError) as e:
        write_dicom_seg(mask[:, :32], vol.source, tmp_path / "seg.dcm", **ALGO)
    assert str(e.value) == (f"{vol.source[0]}: mask shape (10, 32, 64) does not match the series' (10, 64, 64) "
                            "(10 files of 64x64)")
    with pytest.raises(InputError, match=r"^mask labels must be in 0\.\.5, got 0\.\.6$"):
        write_dicom_seg(np.where(mask == 5, 6, mask).astype(np.uint8), vol.source, tmp_path / "seg.dcm", **ALGO)
    with pytest.raises(InputError, match=r"^mask must hold integer labels 0\.\.5, got dtype float32$"):
        write_dicom_seg(mask.astype(np.float32), vol.source, tmp_path / "seg.dcm", **ALGO)
    assert not (tmp_path / "seg.dcm").exists()


def test_missing_source_file_is_named(synth_series, tmp_path):
    vol, mask = synth_series
    gone = str(tmp_path / "gone.dcm")
    with pytest.raises(InputError) as e:
        write_dicom_seg(mask, [*vol.source[:-1], gone], tmp_path / "seg.dcm", **ALGO)
    assert str(e.value) == f"{gone}: source DICOM file not found"


@pytest.fixture(scope="module")
def cq500(cq500_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_dicom_series(cq500_dir)


def test_cq500_tilted_blobs_come_back_on_their_slices(cq500, tmp_path):
    vol = cq500
    assert vol.shape == (238, 512, 512) and vol.gantry_tilt_deg == pytest.approx(8.5, abs=0.05)
    mask = np.zeros(vol.shape, np.uint8)
    yy, xx = np.mgrid[:512, :512]
    blobs = {3: (2, 200, 180, 12), 120: (1, 256, 300, 20), 121: (4, 150, 256, 8), 235: (5, 300, 260, 15),
             236: (5, 300, 260, 15), 237: (3, 256, 256, 6)}  # slice: (label, row, col, radius); 235|236 is the gap
    for k, (label, r, c, rad) in blobs.items():
        mask[k][(yy - r) ** 2 + (xx - c) ** 2 <= rad ** 2] = label
    with pytest.warns(InputWarning, match="the series has no FrameOfReferenceUID; the SEG uses"):
        out = write_dicom_seg(mask, vol.source, tmp_path / "seg.dcm", **ALGO)

    ds = pydicom.dcmread(out, stop_before_pixels=True)
    assert int(ds.NumberOfFrames) == len(blobs)
    assert ds.FrameOfReferenceUID == frame_of_reference_for(vol.series_uid)  # CQ500 has none of its own
    assert (ds.PatientIdentityRemoved, ds.DeidentificationMethod) == ("YES", "not recorded in the source images")
    uid_of = {k: str(pydicom.dcmread(vol.source[k], stop_before_pixels=True).SOPInstanceUID) for k in blobs}
    got = {(str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID),
            int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)) for f in ds.PerFrameFunctionalGroupsSequence}
    assert got == {(uid_of[k], label) for k, (label, *_) in blobs.items()}
    np.testing.assert_array_equal(seg_to_labels(out, vol.source), mask)
    errors, _ = dciodvfy(out)
    assert errors == []
