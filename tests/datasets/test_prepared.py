"""Prepared scans: slice-label alignment, cranial flags, the cache, and errors naming the scan."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

import ichdet.datasets.prepared as prepared
from ichdet.datasets.cache import PreparedCache
from ichdet.datasets.manifest import ManifestRow, SliceLabel, read_manifest, write_manifest
from ichdet.datasets.prepared import PreparedCohort, align_slice_labels, load_prepared, pair_reduce
from ichdet.errors import InputError
from ichdet.io import read_volume
from ichdet.preprocess import PrepSpec, cranial_slices

SPEC = PrepSpec(windows=("brain", "subdural"), size=32)
SPEC_Z = PrepSpec(windows=("brain",), size=32, z_max_filter=True)


def csv_slice_labels(manifest: Path) -> dict[str, np.ndarray]:
    out: dict[str, list[tuple[int, int]]] = {}
    with open(manifest.parent / "slice_labels.csv", newline="") as fh:
        for rec in csv.DictReader(fh):
            out.setdefault(rec["scan_id"], []).append((int(rec["slice_index"]), int(rec["label"])))
    return {k: np.array([lab for _, lab in sorted(v)]) for k, v in out.items()}


def test_slice_labels_and_cranial_flags_align(cohort_manifest: Path) -> None:
    cohort = PreparedCohort(cohort_manifest, SPEC)
    expected = csv_slice_labels(cohort_manifest)
    assert sum(r.label for r in cohort.rows) == 4
    for row in cohort.rows:
        scan = cohort[row.scan_id]
        vol = read_volume(row.resolved_path(cohort_manifest.parent))
        assert scan.image.shape == (2, 30, 32, 32) and scan.image.dtype == np.float32
        assert 0.0 <= scan.image.min() and scan.image.max() <= 1.0
        assert scan.slice_labels.dtype == np.int8
        np.testing.assert_array_equal(scan.slice_labels, expected[row.scan_id])
        np.testing.assert_array_equal(scan.cranial, cranial_slices(vol.hu, vol.spacing))
        assert (scan.label, scan.patient_id) == (row.label, row.patient_id)
        assert scan.slice_labels.max() == row.label  # positives show blood on some slice, negatives on none
    # skull base and vertex: the synthetic scans' end slices are not cranial
    assert not any(cohort[s].cranial[0] or cohort[s].cranial[-1] for s in cohort.scan_ids())


def test_z_max_filter_merges_slice_pairs(cohort_manifest: Path) -> None:
    full = PreparedCohort(cohort_manifest, SPEC)
    half = PreparedCohort(cohort_manifest, SPEC_Z)
    for sid in half.scan_ids():
        a, b = full[sid], half[sid]
        assert b.image.shape == (1, 15, 32, 32)
        np.testing.assert_array_equal(b.slice_labels, np.maximum(a.slice_labels[0::2], a.slice_labels[1::2]))
        np.testing.assert_array_equal(b.cranial, a.cranial[0::2] | a.cranial[1::2])
    positive = [s for s in half.scan_ids() if half[s].label == 1]
    assert all(half[s].slice_labels.max() == 1 for s in positive)


def test_pair_reduce_odd_length_keeps_last_slice() -> None:
    np.testing.assert_array_equal(pair_reduce(np.array([0, 1, -1, 0, 1], np.int8), "max"), [1, 0, 1])
    np.testing.assert_array_equal(pair_reduce(np.array([False, False, True]), "any"), [False, True])


@pytest.mark.parametrize("n", range(1, 8))
def test_training_labels_merge_the_slices_the_slice_map_names(n: int) -> None:
    """The labels of prepared slice k are merged from the source slices that `slice_map` says
    slice k covers (one rule for training and for predict's map back)."""
    from ichdet.io import Volume
    from ichdet.preprocess import slice_map

    groups = slice_map(Volume(np.zeros((n, 4, 4), np.float32), (5.0, 1.0, 1.0), np.eye(4)),
                       PrepSpec(z_max_filter=True)).groups
    np.testing.assert_array_equal(pair_reduce(np.arange(n), "max"), [max(g) for g in groups])
    subtypes = np.arange(n * 5).reshape(n, 5)
    np.testing.assert_array_equal(pair_reduce(subtypes, "max"), [subtypes[list(g)].max(axis=0) for g in groups])


def test_missing_slice_labels_are_zero_for_negatives_and_unknown_for_positives(cohort_manifest: Path) -> None:
    cohort = PreparedCohort(cohort_manifest, SPEC_Z, slice_labels_path=None)
    for sid in cohort.scan_ids():
        scan = cohort[sid]
        assert scan.slice_labels.shape == (15,)
        assert set(scan.slice_labels.tolist()) == ({-1} if scan.label else {0})


def test_slice_label_count_mismatch_names_scan_and_counts() -> None:
    labels = [SliceLabel("s1", k, 0) for k in range(29)]
    with pytest.raises(InputError) as e:
        align_slice_labels("s1", 1, 30, labels, False)
    assert str(e.value) == "scan 's1': the slice-label CSV has 29 slice(s) but the volume has 30"
    twice = [SliceLabel("s1", k, 0) for k in range(29)] + [SliceLabel("s1", 3, 1)]
    with pytest.raises(InputError, match="slice_index 3 twice"):
        align_slice_labels("s1", 1, 30, twice, False)


def test_slice_label_mismatch_from_csv(cohort_manifest: Path, tmp_path: Path) -> None:
    lines = (cohort_manifest.parent / "slice_labels.csv").read_text().splitlines()
    short = [ln for ln in lines if not ln.startswith("synth1_00001,29,")]
    path = tmp_path / "short.csv"
    path.write_text("\n".join(short) + "\n")
    cohort = PreparedCohort(cohort_manifest, SPEC, slice_labels_path=path)
    with pytest.raises(InputError) as e:
        cohort["synth1_00001"]
    assert "scan 'synth1_00001': the slice-label CSV has 29 slice(s) but the volume has 30" in str(e.value)


def test_cache_avoids_decoding_the_second_time(cohort_manifest: Path, tmp_path: Path, monkeypatch) -> None:
    calls: list[Path] = []

    def counting_read_volume(path, **kw):
        calls.append(Path(path))
        return read_volume(path, **kw)

    monkeypatch.setattr(prepared, "read_volume", counting_read_volume)
    cache = PreparedCache(tmp_path / "cache")
    progress: list[tuple[int, int, str]] = []
    first = PreparedCohort(cohort_manifest, SPEC_Z, cache=cache, progress=lambda *a: progress.append(a))
    assert first.prepare_all() == {}
    assert len(calls) == 8 and [p[:2] for p in progress] == [(i, 8) for i in range(1, 9)]
    second = PreparedCohort(cohort_manifest, SPEC_Z, cache=cache)
    second.prepare_all()
    assert len(calls) == 8  # nothing decoded again
    other_spec = PreparedCohort(cohort_manifest, SPEC, cache=cache)
    other_spec["synth1_00000"]
    assert len(calls) == 9  # another spec is another key
    plain = PreparedCohort(cohort_manifest, SPEC_Z)
    for sid in second.scan_ids():
        a, b = second[sid], plain[sid]
        assert isinstance(a.image, np.memmap)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.cranial, b.cranial)
        np.testing.assert_array_equal(a.slice_labels, b.slice_labels)


def test_prepare_all_with_worker_processes(cohort_manifest: Path, tmp_path: Path) -> None:
    cache = PreparedCache(tmp_path / "cache")
    cohort = PreparedCohort(cohort_manifest, SPEC_Z, cache=cache)
    cohort.prepare_all(workers=2, scan_ids=cohort.scan_ids()[:3])
    plain = PreparedCohort(cohort_manifest, SPEC_Z)
    for sid in cohort.scan_ids()[:3]:
        np.testing.assert_array_equal(cohort[sid].image, plain[sid].image)
    assert len(list((tmp_path / "cache").glob("??/*.npy"))) == 9  # image, cranial flags and slice spacing per scan


def test_bad_scan_names_scan_and_path(cohort_manifest: Path, tmp_path: Path) -> None:
    rows = read_manifest(cohort_manifest)[:2]
    shutil.copytree(rows[0].resolved_path(cohort_manifest.parent), tmp_path / "good")
    bad_dir = tmp_path / "broken"
    bad_dir.mkdir()
    (bad_dir / "IM00001.dcm").write_bytes(b"not a dicom file at all")
    rows = [ManifestRow("good", "p1", "good", 0), ManifestRow("broken", "p2", "broken", 0),
            ManifestRow("gone", "p3", "missing_folder", 0)]
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    cohort = PreparedCohort(manifest, SPEC, cache=PreparedCache(tmp_path / "cache"))
    for sid, folder in (("broken", bad_dir), ("gone", tmp_path / "missing_folder")):
        with pytest.raises(InputError) as e:
            cohort[sid]
        assert f"scan {sid!r}" in str(e.value) and str(folder) in str(e.value)
    failed = cohort.prepare_all(errors="collect")
    assert sorted(failed) == ["broken", "gone"] and cohort["good"].n_slices == 30
    with pytest.raises(InputError, match="scan 'broken'"):
        PreparedCohort(manifest, SPEC).prepare_all()
    with pytest.raises(InputError, match="scan 'nope' is not in the manifest"):
        cohort["nope"]


def test_load_prepared_single_row(cohort_manifest: Path) -> None:
    row = read_manifest(cohort_manifest)[3]
    scan = load_prepared(row, cohort_manifest.parent, SPEC_Z, None, None)
    assert scan.scan_id == row.scan_id and scan.image.shape == (1, 15, 32, 32)
    assert (scan.slice_labels == -1).all()  # positive, no slice labels given


# ---------------------------------------------------------------- one-slice inputs (2D image sets)
def test_one_slice_scan_without_slice_labels_takes_the_scan_label() -> None:
    for z in (False, True):
        np.testing.assert_array_equal(align_slice_labels("img", 1, 1, None, z), [1])
        np.testing.assert_array_equal(align_slice_labels("img", 0, 1, None, z), [0])
        np.testing.assert_array_equal(align_slice_labels("img", 1, 1, [], z), [1])
        assert align_slice_labels("img", 1, 1, None, z).dtype == np.int8
    # several slices keep the old rule: a positive scan's unlabelled slices are unknown
    np.testing.assert_array_equal(align_slice_labels("vol", 1, 3, None, False), [-1, -1, -1])
    np.testing.assert_array_equal(align_slice_labels("vol", 0, 3, None, False), [0, 0, 0])
    # given slice labels still win over the scan label for a one-slice scan
    np.testing.assert_array_equal(align_slice_labels("img", 1, 1, [SliceLabel("img", 0, 0)], False), [0])


def _png(path: Path, head: bool) -> Path:
    from PIL import Image, ImageDraw

    img = Image.new("L", (120, 100), 0)
    if head:
        d = ImageDraw.Draw(img)
        d.ellipse([20, 10, 100, 90], fill=255)
        d.ellipse([24, 14, 96, 86], fill=110)
    img.save(path)
    return path


@pytest.mark.parametrize("label, head", [(1, True), (0, True), (1, False)])
def test_load_prepared_png_row_is_one_cranial_slice_with_the_scan_label(tmp_path: Path, label: int, head: bool) -> None:
    _png(tmp_path / "img7.png", head)
    row = ManifestRow("img7", "p7", "img7.png", label)
    spec = PrepSpec(windows=("brain",), size=32, crop_head=True)
    scan = load_prepared(row, tmp_path, spec)
    assert scan.image.shape == (1, 1, 32, 32) and scan.image.dtype == np.float32
    assert scan.cranial.tolist() == [True]  # an image of a 2D set shows the head by definition
    assert scan.slice_labels.tolist() == [label] and scan.slice_labels.dtype == np.int8
    assert (scan.label, scan.patient_id, scan.n_slices) == (label, "p7", 1)
    if head:
        assert scan.image.max() == pytest.approx(1.0) and scan.image[0, 0, 16, 16] == pytest.approx(110 / 255)
    else:
        assert scan.image.max() == 0.0  # no head found: the black image stays black


def test_png_cohort_through_the_cache(tmp_path: Path, monkeypatch) -> None:
    _png(tmp_path / "a.png", True)
    _png(tmp_path / "b.png", True)
    manifest = write_manifest(tmp_path / "manifest.csv", [ManifestRow("a", "a", "a.png", 1),
                                                          ManifestRow("b", "b", "b.png", 0)])
    spec = PrepSpec(windows=("brain", "subdural"), size=32, crop_head=True)
    cache = PreparedCache(tmp_path / "cache")
    first = PreparedCohort(manifest, spec, cache=cache)
    first.prepare_all()

    def no_decoding(path, **kw):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(prepared, "read_volume", no_decoding)
    second = PreparedCohort(manifest, spec, cache=cache)
    for sid, y in (("a", 1), ("b", 0)):
        s1, s2 = first[sid], second[sid]
        assert isinstance(s2.image, np.memmap)
        assert s2.cranial.tolist() == [True] and s2.slice_labels.tolist() == [y]
        np.testing.assert_array_equal(s1.image, s2.image)
        np.testing.assert_array_equal(s2.image[0], s2.image[1])  # the same grey in both channels


def test_slice_subtypes_follow_the_slice_label_csv(cohort_manifest: Path) -> None:
    """The synthetic cohort labels every slice with the five subtypes; the targets are those
    columns, a slice bleeds exactly when one of its subtypes does, and the 2x2x2 filter merges
    pairs like the binary labels."""
    from ichdet.datasets.manifest import SUBTYPES

    rows: dict[str, dict[int, list[int]]] = {}
    with open(cohort_manifest.parent / "slice_labels.csv", newline="") as fh:
        for rec in csv.DictReader(fh):
            rows.setdefault(rec["scan_id"], {})[int(rec["slice_index"])] = [int(rec[s]) for s in SUBTYPES]
    full, half = PreparedCohort(cohort_manifest, SPEC), PreparedCohort(cohort_manifest, SPEC_Z)
    for sid in full.scan_ids():
        a, b = full[sid], half[sid]
        want = np.array([rows[sid][k] for k in sorted(rows[sid])], dtype=np.int8)
        assert a.slice_subtypes.dtype == np.int8 and a.slice_subtypes.shape == (30, 5)
        np.testing.assert_array_equal(a.slice_subtypes, want)
        np.testing.assert_array_equal(a.slice_subtypes.max(axis=1), a.slice_labels)
        np.testing.assert_array_equal(b.slice_subtypes, np.maximum(a.slice_subtypes[0::2], a.slice_subtypes[1::2]))
        assert {s for s, v in a.subtypes.items() if v} == {SUBTYPES[j] for j in np.flatnonzero(want.max(axis=0))}


def test_align_slice_subtypes_without_full_labels() -> None:
    from ichdet.datasets.prepared import align_slice_subtypes

    neg = align_slice_subtypes("a", 0, {}, 4, None, False)
    assert neg.shape == (4, 5) and (neg == 0).all()
    assert (align_slice_subtypes("b", 1, {"subdural": 1}, 4, None, False) == -1).all()  # which slices: unknown
    one = align_slice_subtypes("c", 1, {"epidural": 0, "subdural": 1}, 1, None, False)
    assert one.tolist() == [[0, -1, -1, -1, 1]]  # an image takes its scan's subtypes; missing ones unknown
    labels = [SliceLabel("d", 0, 0), SliceLabel("d", 1, 1), SliceLabel("d", 2, 1, {"subarachnoid": 1})]
    got = align_slice_subtypes("d", 1, {}, 3, labels, False)
    assert got.tolist() == [[0] * 5, [-1] * 5, [-1, -1, -1, 1, -1]]
    assert align_slice_subtypes("d", 1, {}, 3, labels, True).tolist() == [[0] * 5, [-1, -1, -1, 1, -1]]


def test_cache_keys_of_image_and_cranial_flags_are_unchanged(cohort_manifest: Path) -> None:
    """The slice spacing joined the cache as a third entry; the image's and the cranial flags' keys
    are still the ones `volume_key_parts` gave them, so existing caches stay valid."""
    from ichdet.datasets.cache import volume_key_parts

    row = read_manifest(cohort_manifest)[0]
    path = row.resolved_path(cohort_manifest.parent)
    keys = prepared._key_parts(row, path, SPEC_Z)
    same = {"layout": 2, "path": str(path.resolve()), "series_uid": row.extra["series_uid"]}
    files = prepared.source_files(path)
    assert keys["image"] == volume_key_parts(files, SPEC_Z.to_dict(), what="image", **same)
    assert keys["cranial"] == volume_key_parts(files, {}, what="cranial", **same)
    assert keys["z_spacing"] == {**keys["cranial"], "what": "z_spacing"}


def test_slice_spacing_is_kept_and_an_older_cache_gains_it_without_preparing_again(
        cohort_manifest: Path, tmp_path: Path, monkeypatch) -> None:
    cache = PreparedCache(tmp_path / "cache")
    cohort = PreparedCohort(cohort_manifest, SPEC_Z, cache=cache)
    ids = cohort.scan_ids()
    assert [cohort[s].z_spacing_mm for s in ids] == [5.0] * 8
    assert cohort.slice_thickness_mm(ids) == 5.0 == PreparedCohort(cohort_manifest, SPEC_Z).slice_thickness_mm(ids[:2])
    row = cohort.row(ids[0])
    cache.path_for(prepared._key_parts(row, row.resolved_path(cohort.root), SPEC_Z)["z_spacing"]).unlink()
    reads, prepares = [], []
    monkeypatch.setattr(prepared, "read_volume", lambda path, **kw: reads.append(path) or read_volume(path, **kw))
    monkeypatch.setattr(prepared, "prepare_volume", lambda *a: prepares.append(a) or None)
    again = PreparedCohort(cohort_manifest, SPEC_Z, cache=cache)
    assert again[ids[0]].z_spacing_mm == 5.0 and again[ids[1]].z_spacing_mm == 5.0
    assert len(reads) == 1 and prepares == []  # read once for the spacing; the cached image is used
    np.testing.assert_array_equal(again[ids[0]].image, cohort[ids[0]].image)


def test_slabs_merge_labels_and_cranial_flags_with_the_slices(tmp_path: Path) -> None:
    """A 0.625 mm cohort with `slab_mm` 5 and the z filter: prepared slice j covers source slices
    16j..16j+15, its label the maximum and its cranial flag the 'any' of theirs."""
    from ichdet.datasets.prepared import n_prepared_slices
    from ichdet.synth import make_cohort

    manifest = make_cohort(tmp_path / "thin", 2, seed=3, size=64, n_slices=40, slice_thickness=0.625,
                           positive_fraction=1.0)
    spec = PrepSpec(windows=("brain",), size=32, z_max_filter=True, slab_mm=5.0)
    full, slabs = PreparedCohort(manifest, PrepSpec(windows=("brain",), size=32)), PreparedCohort(manifest, spec)
    assert full.slice_thickness_mm(full.scan_ids()) == 0.625
    groups = [list(range(0, 16)), list(range(16, 32)), list(range(32, 40))]
    for sid in slabs.scan_ids():
        a, b = full[sid], slabs[sid]
        assert b.image.shape == (1, 3, 32, 32) == (1, n_prepared_slices(40, spec, 0.625), 32, 32)
        assert b.slice_labels.dtype == np.int8 and b.slice_subtypes.dtype == np.int8
        np.testing.assert_array_equal(b.slice_labels, [a.slice_labels[g].max() for g in groups])
        np.testing.assert_array_equal(b.slice_subtypes, [a.slice_subtypes[g].max(axis=0) for g in groups])
        np.testing.assert_array_equal(b.cranial, [a.cranial[g].any() for g in groups])
        assert b.slice_labels.max() == 1 and b.z_spacing_mm == 0.625
    assert n_prepared_slices(40, spec) == 20 and n_prepared_slices(40, PrepSpec()) == 40


def test_a_2d_image_set_has_no_slice_thickness(tmp_path: Path) -> None:
    from PIL import Image

    for i in range(2):
        Image.fromarray(np.full((40, 40), 60 * i, np.uint8)).save(tmp_path / f"img{i}.png")
    manifest = write_manifest(tmp_path / "manifest.csv", [ManifestRow(f"img{i}", f"p{i}", f"img{i}.png", i) for i in range(2)])
    cohort = PreparedCohort(manifest, PrepSpec(size=32, z_max_filter=True, slab_mm=5.0))
    assert [cohort[s].z_spacing_mm for s in cohort.scan_ids()] == [None, None]
    assert cohort.slice_thickness_mm(cohort.scan_ids()) is None and cohort["img1"].image.shape == (1, 1, 32, 32)
