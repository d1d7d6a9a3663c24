"""Prepared scans: network-ready arrays + per-slice labels + cranial flags, cached on disk.

`load_prepared` turns one manifest row into a `PreparedScan`; `PreparedCohort` does it lazily
for a whole manifest. With a `PreparedCache` the prepared image, the full-resolution cranial
flags and the slice spacing are stored under keys built from the series' file fingerprints
(listed, not decoded), the scan path, the series uid and (for the image) the `PrepSpec`, so the
second pass over a cohort decodes nothing. `PreparedCohort.slice_thickness_mm` is the median
slice spacing of a set of scans: what a bundle records as its training slice thickness.
"""
from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ichdet.datasets.cache import PreparedCache, volume_key_parts
from ichdet.datasets.manifest import SUBTYPES, ManifestRow, SliceLabel, read_manifest, read_slice_labels
from ichdet.errors import InputError
from ichdet.io import read_volume
from ichdet.io.images import is_image
from ichdet.io.sources import list_files
from ichdet.io.volume import Volume
from ichdet.preprocess import PrepSpec, cranial_slices, merge_groups, prepare_volume, series_spacing, slice_groups, z_block
from ichdet.preprocess.pipeline import Z_MAX_FILTER

UNKNOWN = -1  # slice label of a slice nobody annotated
ScanProgress = Callable[[int, int, str], None]  # progress(done, total, scan_id), after each scan prepared


@dataclass
class PreparedScan:
    """One scan ready for training.

    image: float32 (C, Z', S, S) in [0, 1] (may be a read-only memory map from the cache).
    slice_labels: int8 (Z',): 1 bleed, 0 none, -1 unknown; index 0 = most inferior slice.
    cranial: bool (Z',): the slice shows the cranial cavity.
    slice_subtypes: int8 (Z', 5) in `SUBTYPES` order, 1 / 0 / -1 (unknown) per slice and subtype
        (see `align_slice_subtypes`).
    z_spacing_mm: the distance between the source slices (mm), None for one slice or an image.
    Z' = Z, or ceil(Z / 2) when the spec's z max filter merged slice pairs; with `spec.slab_mm`
    the source slices are first merged into slabs (`ichdet.preprocess.z_block`).
    """

    scan_id: str
    patient_id: str
    label: int
    subtypes: dict[str, int]
    image: np.ndarray
    slice_labels: np.ndarray
    cranial: np.ndarray
    extra: dict[str, str] = field(default_factory=dict)
    slice_subtypes: np.ndarray | None = None
    z_spacing_mm: float | None = None

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[1])


def source_files(path: Path) -> list[Path]:
    """The files a scan is read from, without decoding: a folder's files (sorted, recursive,
    hidden skipped, as the DICOM reader lists them) or the file itself (NIfTI, zip, image)."""
    if path.is_dir():
        files = list_files(path)
        if not files:
            raise InputError("folder holds no readable files", path)
        return files
    if not path.is_file():
        raise InputError("no such file or folder", path)
    return [path]


def pair_reduce(values: np.ndarray, how: str) -> np.ndarray:
    """(Z, ...) -> (ceil(Z/2), ...): ``max`` (labels; -1 unknown loses to 0/1) or ``any`` of the
    source slices of each prepared slice under the 2x2x2 filter, by the rule `prepare_volume` and
    `slice_map` follow (`ichdet.preprocess.slice_groups`: pairs (0, 1), (2, 3), ..., an odd last
    slice alone)."""
    v = np.asarray(values)
    return merge_groups(v, slice_groups(v.shape[0], Z_MAX_FILTER), how)


def align_slice_labels(scan_id: str, label: int, n_slices: int, slice_labels: Sequence[SliceLabel] | None,
                       z_max_filter: bool) -> np.ndarray:
    """int8 (Z',) slice labels for a scan of `n_slices` slices (before any z filter).

    No slice labels: all 0 for a negative scan, all -1 (unknown) for a positive one with several
    slices, the scan label for a one-slice scan (an image of a 2D set). Given
    labels must cover every slice index 0..n_slices-1 exactly once.
    """
    if not slice_labels:
        known = int(label) == 0 or n_slices == 1
        out = np.full(n_slices, int(label) if known else UNKNOWN, dtype=np.int8)
    else:
        if len(slice_labels) != n_slices:
            raise InputError(f"scan {scan_id!r}: the slice-label CSV has {len(slice_labels)} slice(s) "
                             f"but the volume has {n_slices}")
        out = np.full(n_slices, UNKNOWN, dtype=np.int8)
        for s in slice_labels:
            if not 0 <= s.slice_index < n_slices or out[s.slice_index] != UNKNOWN:
                raise InputError(f"scan {scan_id!r}: slice-label CSV has slice_index {s.slice_index} "
                                 f"{'twice' if 0 <= s.slice_index < n_slices else 'outside'} for a volume of "
                                 f"{n_slices} slices (indices 0..{n_slices - 1})")
            out[s.slice_index] = int(s.label)
    return pair_reduce(out, "max").astype(np.int8) if z_max_filter else out


def align_slice_subtypes(scan_id: str, label: int, subtypes: Mapping[str, int], n_slices: int,
                         slice_labels: Sequence[SliceLabel] | None, z_max_filter: bool) -> np.ndarray:
    """int8 (Z', 5) subtype targets in `SUBTYPES` order: 1 present, 0 absent, -1 unknown.

    With slice labels: a slice's own subtype columns; a subtype it does not give is 0 on a slice
    without bleed and unknown on a slice with one. Without: 0 everywhere for a negative scan, the
    scan's subtypes for a one-slice scan (an image of a 2D set), unknown for the slices of a
    positive scan. The 2x2x2 filter merges pairs as `pair_reduce(..., "max")` does.
    """
    out = np.full((n_slices, len(SUBTYPES)), UNKNOWN, dtype=np.int8)
    if not slice_labels:
        if int(label) == 0:
            out[:] = 0
        elif n_slices == 1:
            out[0] = [subtypes.get(name, UNKNOWN) for name in SUBTYPES]
    else:
        for sl in slice_labels:  # indices were checked by align_slice_labels
            out[sl.slice_index] = [sl.subtypes.get(name, 0 if int(sl.label) == 0 else UNKNOWN) for name in SUBTYPES]
    if not z_max_filter:
        return out
    return pair_reduce(out, "max").astype(np.int8)


CACHED = ("image", "cranial", "z_spacing")  # what the cache holds per scan


def _key_parts(row: ManifestRow, path: Path, spec: PrepSpec) -> dict[str, dict]:
    """{what: key parts} of `CACHED`, the files fingerprinted once (the image's and the cranial
    flags' keys are those `volume_key_parts(files, spec or {}, what=..., layout=2, ...)` gives)."""
    base = volume_key_parts(source_files(path), {}, what="cranial", layout=2, path=str(path.resolve()),
                            series_uid=row.extra.get("series_uid", ""))
    return {what: {**base, "what": what, **({"spec": spec.to_dict()} if what == "image" else {})} for what in CACHED}


def _merged(values: np.ndarray, block: int, how: str) -> np.ndarray:
    """Per source slice (Z, ...) -> per prepared slice: runs of `block` slices merged (`merge_groups`)."""
    return values if block == 1 else merge_groups(values, slice_groups(values.shape[0], block), how)


def load_prepared(row: ManifestRow, root: str | Path, spec: PrepSpec = PrepSpec(), cache: PreparedCache | None = None,
                  slice_labels: Sequence[SliceLabel] | None = None) -> PreparedScan:
    """Read, prepare and label one manifest row; InputError names the scan and its path."""
    path = row.resolved_path(root)
    try:
        image, cranial_full, z_mm = _image_cranial_spacing(row, path, spec, cache)
        n, block = int(cranial_full.shape[0]), z_block(spec, z_mm)  # source slices per prepared slice
        labels = _merged(align_slice_labels(row.scan_id, row.label, n, slice_labels, False), block, "max")
        subtypes = _merged(align_slice_subtypes(row.scan_id, row.label, row.subtypes, n, slice_labels, False),
                           block, "max")
    except InputError as e:
        msg = str(e)
        raise InputError(msg if f"scan {row.scan_id!r}" in msg else f"scan {row.scan_id!r}: {msg}",
                         None if str(path) in msg else path) from None
    except (OSError, MemoryError) as e:  # the file cannot be read; anything else is an internal error
        raise InputError(f"scan {row.scan_id!r}: cannot be read ({e.__class__.__name__}: {e})", path) from None
    cranial = _merged(np.asarray(cranial_full, dtype=bool), block, "any")
    if image.shape[1] != labels.shape[0]:
        raise InputError(f"scan {row.scan_id!r}: prepared image has {image.shape[1]} slices but the labels "
                         f"have {labels.shape[0]} (stale cache?)", path)
    return PreparedScan(row.scan_id, row.patient_id, int(row.label), dict(row.subtypes), image, labels,
                        np.asarray(cranial, dtype=bool), dict(row.extra), subtypes.astype(np.int8), z_mm)


def _image_cranial_spacing(row: ManifestRow, path: Path, spec: PrepSpec,
                           cache: PreparedCache | None) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(image (C, Z', S, S), cranial flags (Z,) at full z resolution, slice spacing in mm or None),
    from the cache where there; the volume is read at most once, only for what is missing."""
    read: list[Volume] = []

    def volume() -> Volume:
        if not read:
            read.append(read_volume(path, series_uid=row.extra.get("series_uid") or None))
        return read[0]

    def cranial() -> np.ndarray:
        vol = volume()
        if vol.hu.shape[0] == 1:  # one image of a 2D set shows the head by definition
            return np.ones(1, dtype=bool)
        return cranial_slices(vol.hu, vol.spacing)

    def spacing() -> np.ndarray:  # (1,) float64, NaN where there is none
        z = series_spacing(volume())
        return np.array([np.nan if z is None else z], dtype=np.float64)

    compute = {"image": lambda: prepare_volume(volume(), spec), "cranial": cranial, "z_spacing": spacing}
    if cache is None:
        got = {what: fn() for what, fn in compute.items()}
    else:
        keys = _key_parts(row, path, spec)
        got = {what: cache.get_or_compute(keys[what], compute[what]) for what in CACHED}
    z = float(np.asarray(got["z_spacing"]).reshape(-1)[0])
    return got["image"], np.asarray(got["cranial"], dtype=bool), None if np.isnan(z) else z


def _prepare_worker(args: tuple) -> tuple[str, PreparedScan | None, str | None]:
    row, root, spec, cache_root, labels = args
    try:
        scan = load_prepared(row, root, spec, PreparedCache(cache_root) if cache_root else None, labels)
    except InputError as e:
        return row.scan_id, None, str(e)
    return row.scan_id, (None if cache_root else scan), None


class PreparedCohort:
    """A manifest whose scans are prepared on first use and then held (by scan_id).

    slice_labels_path: "auto" reads ``slice_labels.csv`` beside the manifest when present; a
    path reads that file; None uses none. Without a cache every loaded scan stays in RAM
    (C * Z' * S * S * 4 bytes each); with one, scans are memory maps of cache files.
    Pickling (DataLoader workers with spawn) drops the loaded scans; workers reload them.
    """

    def __init__(self, manifest_path: str | Path, spec: PrepSpec = PrepSpec(), cache: PreparedCache | None = None,
                 slice_labels_path: str | Path | None = "auto", progress: ScanProgress | None = None):
        self.manifest_path = Path(manifest_path)
        self.root = self.manifest_path.parent
        self.spec = spec
        self.cache = cache
        self.progress = progress
        self.rows: list[ManifestRow] = read_manifest(self.manifest_path)
        self._rows = {r.scan_id: r for r in self.rows}
        if slice_labels_path == "auto":
            auto = self.root / "slice_labels.csv"
            slice_labels_path = auto if auto.is_file() else None
        self.slice_labels: dict[str, list[SliceLabel]] = (
            read_slice_labels(slice_labels_path) if slice_labels_path is not None else {})
        self._scans: dict[str, PreparedScan] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, scan_id: object) -> bool:
        return scan_id in self._rows

    def row(self, scan_id: str) -> ManifestRow:
        try:
            return self._rows[scan_id]
        except KeyError:
            raise InputError(f"scan {scan_id!r} is not in the manifest", self.manifest_path) from None

    def __getitem__(self, scan_id: str) -> PreparedScan:
        scan = self._scans.get(scan_id)
        if scan is None:
            scan = load_prepared(self.row(scan_id), self.root, self.spec, self.cache, self.slice_labels.get(scan_id))
            self._scans[scan_id] = scan
        return scan

    def scan_ids(self, split: str | None = None, splits: Mapping[str, str] | None = None) -> list[str]:
        """Scan ids in manifest order; with `split`, only those `splits` assigns to it."""
        if split is None:
            return [r.scan_id for r in self.rows]
        if splits is None:
            raise InputError(f"scan_ids(split={split!r}) needs the splits mapping (scan_id -> split)")
        return [r.scan_id for r in self.rows if splits.get(r.scan_id) == split]

    def labels(self, scan_ids: Sequence[str]) -> np.ndarray:
        """int64 (N,) scan labels from the manifest (no loading)."""
        return np.array([self.row(s).label for s in scan_ids], dtype=np.int64)

    def label_targets(self, scan_ids: Sequence[str]) -> np.ndarray:
        """int64 (N, 6) scan-level targets in `SUBTYPE_LABELS` order (five subtypes, then "any"
        = the label), from the manifest (no loading): 1 / 0, or -1 for a subtype the manifest does
        not give for a positive scan. A negative scan has no subtype."""
        out = np.full((len(scan_ids), len(SUBTYPES) + 1), UNKNOWN, dtype=np.int64)
        for i, sid in enumerate(scan_ids):
            row = self.row(sid)
            out[i, :-1] = [0 if row.label == 0 else row.subtypes.get(name, UNKNOWN) for name in SUBTYPES]
            out[i, -1] = row.label
        return out

    def prepare_all(self, workers: int = 1, scan_ids: Sequence[str] | None = None,
                    errors: str = "raise") -> dict[str, str]:
        """Load every scan (filling the cache) with `workers` processes, calling
        ``progress(done, total, scan_id)`` after each. errors="raise" stops at the first bad scan;
        "collect" skips bad scans and returns {scan_id: message}."""
        if errors not in ("raise", "collect"):
            raise InputError(f"errors must be 'raise' or 'collect', got {errors!r}")
        ids = [s for s in (scan_ids if scan_ids is not None else self.scan_ids()) if s not in self._scans]
        total, failed = len(ids), {}
        done = 0

        def finish(sid: str, scan: PreparedScan | None, err: str | None) -> None:
            nonlocal done
            if err is not None:
                if errors == "raise":
                    raise InputError(err)
                failed[sid] = err
            elif scan is not None:
                self._scans[sid] = scan
            done += 1
            if self.progress is not None:
                self.progress(done, total, sid)

        if workers <= 1 or total <= 1:
            for sid in ids:
                try:
                    finish(sid, self[sid], None)
                except InputError as e:
                    finish(sid, None, str(e))
            return failed
        cache_root = str(self.cache.root) if self.cache is not None else None
        jobs = [(self.row(s), self.root, self.spec, cache_root, self.slice_labels.get(s)) for s in ids]
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(int(workers), total), mp_context=ctx) as pool:
            for sid, scan, err in pool.map(_prepare_worker, jobs):
                if err is None and scan is None:  # cached by the worker: map it here, no decoding
                    scan = load_prepared(self.row(sid), self.root, self.spec, self.cache, self.slice_labels.get(sid))
                finish(sid, scan, err)
        return failed

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_scans"] = {}
        state["progress"] = None
        return state

    def __repr__(self) -> str:
        return (f"PreparedCohort({str(self.manifest_path)!r}, scans={len(self.rows)}, spec={self.spec.key()}, "
                f"loaded={len(self._scans)})")

    def slice_thickness_mm(self, scan_ids: Sequence[str]) -> float | None:
        """The median slice spacing (mm, to 0.001) of these scans (loading them), over those with
        several slices; None when none has any (a 2D image set)."""
        z = [self[s].z_spacing_mm for s in scan_ids]
        z = [v for v in z if v is not None]
        return round(float(np.median(z)), 3) if z else None

    def training_units(self, scan_ids: Sequence[str]) -> str | None:
        """"display" when every one of these scans is a display image (PNG/JPEG/...: already
        windowed grey), "HU" when none is (CT: DICOM, NIfTI), None for a mix."""
        display = {is_image(self.row(s).resolved_path(self.root)) for s in scan_ids}
        return None if len(display) != 1 else ("display" if display.pop() else "HU")


def n_prepared_slices(n_slices: int, spec: PrepSpec, z_spacing_mm: float | None = None) -> int:
    """Z' for a volume of `n_slices` slices `z_spacing_mm` apart (None: unknown) under `spec`."""
    return math.ceil(n_slices / z_block(spec, z_spacing_mm))


__all__ = ["UNKNOWN", "PreparedCohort", "PreparedScan", "align_slice_labels", "load_prepared", "n_prepared_slices",
           "pair_reduce", "source_files"]
