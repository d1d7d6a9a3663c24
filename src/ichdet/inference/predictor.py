"""`Predictor`: a bundle + a runtime -> `ScanPrediction` for a path, a `Volume` or a HU array.

    read (DICOM folder/zip, NIfTI, image) -> prepare_volume(bundle.input_prep: a series thinner
    than the training scans first merged into slabs of their thickness) -> slice sequence
    (Z', C', S, S) -> runtime -> the bundle kind's rule (`Kind.score`) -> probability, decision,
    per-slice probabilities (and subtype probabilities, for a bundle with a multi-label head)
    -> optional Grad-CAM heatmaps of the most suspicious slices

A segmentation bundle (kind "segmentation") runs `SegmentationRuntime` instead: class
probabilities per prepared pixel -> the label mask on the input's own voxels
(`ichdet.engine.segment`) -> volumes in mL and ABC/2 (`ScanPrediction.volumes`), its maps of
P(bleed) as the heatmaps, and with `outputs` the mask as NIfTI and, for DICOM input, a DICOM SEG
and SR (`ichdet.inference.seg_outputs`).
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ichdet.engine.bundle import Bundle
from ichdet.datasets.scans import volume_to_sequence
from ichdet.errors import InputError
from ichdet.inference.result import ScanPrediction
from ichdet.inference.runtime import SLICE_BATCH, OnnxRuntime, SegmentationRuntime, TorchRuntime, weights_digest
from ichdet.io import Volume, read_dicom_series, read_volume
from ichdet.preprocess import PrepSpec, SlabPlan, SliceMap, prepare_volume, slab_plan, slice_map
from ichdet.preprocess.slabs import UNKNOWN_GEOMETRY

RUNTIMES = ("auto", "torch", "onnx")
SEGMENTATION = "segmentation"  # the bundle kind that segments (`SegmentationRuntime`, `ScanPrediction.volumes`)
DEFAULT_RUNTIME = "auto"
ONNX_FILE = "model.onnx"  # where `auto` looks for the bundle's ONNX export
DEFAULT_PRECISION = "auto"  # bf16 where the device does it natively, else fp32 (ichdet.engine.precision)
TOP_SLICES = 3  # prepared slices reported (and given heatmaps) per scan
TISSUE_HU, TISSUE_DISPLAY = -200.0, 0.1  # above these a voxel is tissue (HU; display intensity of an image)
MIN_TISSUE_FRACTION = 0.01  # less tissue than this in the whole input: warn that it may not be a head


def load_volume(x: Volume | str | Path | list[Path] | np.ndarray, series_uid: str | None = None) -> Volume:
    """What `predict` accepts -> a Volume: a path (anything `read_volume` reads), a list of DICOM
    files, a Volume, or a bare HU array (Z, H, W) of unknown geometry (1 mm placeholders, marked
    ``info[UNKNOWN_GEOMETRY]``: never merged into slabs)."""
    if isinstance(x, Volume):
        return x
    if isinstance(x, (str, Path, list)):
        with warnings.catch_warnings():  # the reader's warnings travel in volume.info["warnings"]
            warnings.simplefilter("ignore")
            return read_dicom_series(x, series_uid=series_uid) if isinstance(x, list) else read_volume(x, series_uid=series_uid)
    if isinstance(x, np.ndarray):
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or min(x.shape) == 0:
            raise InputError(f"a HU array for predict must be (Z, H, W) or (H, W), got shape {x.shape}")
        return Volume(x.astype(np.float32), (1.0, 1.0, 1.0), np.eye(4), info={UNKNOWN_GEOMETRY: True})
    raise InputError(f"predict takes a path, a Volume or a HU array, got {type(x).__name__}")


def _own_onnx(bundle: Bundle, path: Path, batch: int | None) -> OnnxRuntime | None:
    """onnxruntime on `path` when it exists, onnxruntime is installed and the file was exported
    from exactly this bundle's weights; else None."""
    if not path.is_file():
        return None
    try:
        import onnxruntime  # noqa: F401
        rt = OnnxRuntime(path, batch=batch or SLICE_BATCH)
    except (ImportError, InputError):
        return None
    return rt if rt.weights_sha256 == weights_digest(bundle.model) and _gives_labels(bundle, rt) else None


def _gives_labels(bundle: Bundle, rt: OnnxRuntime) -> bool:
    """Whether the ONNX file has every label output the bundle's network gives (`Kind.graph_labels`)."""
    slice_labels, scan_labels = bundle.kind_spec.graph_labels(bundle.model)
    return (rt.has_slice_labels or not slice_labels) and (rt.has_scan_labels or not scan_labels)


def _top_prepared(p: np.ndarray, k: int) -> list[int]:
    """Indices of the k highest values, highest first (ties: the lower index first)."""
    order = np.lexsort((np.arange(p.size), -p))
    return [int(i) for i in order[:k]]


def _slice_entry(slices: SliceMap, index: int, probability: float) -> dict[str, Any]:
    """A `top_slices` entry for source slice `index`: {"index", "probability", "z_mm"}, and "file"
    where the volume was read one file per slice."""
    entry: dict[str, Any] = {"index": index, "probability": probability, "z_mm": slices.z_mm[index]}
    if slices.files is not None:
        entry["file"] = slices.files[index]
    return entry


class Predictor:
    """Runs one bundle on scans.

    runtime: "auto" (default: onnxruntime on the bundle's `model.onnx` when that file exists, was
    exported from these weights and onnxruntime is installed, since it is the fastest runtime
    whose outputs equal PyTorch fp32's (benchmarks/bench_infer.py), unless bf16 is asked for;
    otherwise PyTorch at `precision`), "torch" (precision "auto": bf16 autocast of the slice
    encoder where the CPU or GPU has bf16 units, else fp32 on a CPU and fp16 on a GPU; "fp32"; "bf16",
    which warns and runs fp32 where bf16 would be emulated; channels-last) or "onnx" (`onnx_path`, default
    BUNDLE/model.onnx, the file `ichdet export` wrote; it must come from this bundle's weights).
    """

    def __init__(self, bundle: Bundle, runtime: str = DEFAULT_RUNTIME, precision: str = DEFAULT_PRECISION,
                 onnx_path: str | Path | None = None, batch: int | None = None, top_k: int = TOP_SLICES):
        if runtime not in RUNTIMES:
            raise InputError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        if not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k must be a positive integer, got {top_k!r}")
        self.bundle, self.top_k = bundle, top_k
        self.prep: PrepSpec = bundle.input_prep  # the bundle's preparation, plus slabs of its training thickness
        if bundle.kind == SEGMENTATION:
            if runtime == "onnx":
                raise InputError(f"bundle {bundle.path} segments: it runs in PyTorch (--runtime auto or torch), not onnx")
            self.runtime: TorchRuntime | OnnxRuntime | SegmentationRuntime = SegmentationRuntime(
                bundle.model, precision=precision, batch=batch)
            return
        onnx_path = Path(onnx_path) if onnx_path is not None else bundle.path / ONNX_FILE
        chosen = _own_onnx(bundle, onnx_path, batch) if runtime == "auto" and precision in ("auto", "fp32") else None
        if runtime == "onnx":
            if not onnx_path.is_file():
                raise InputError(f"no ONNX file at {onnx_path}: run `ichdet export --model {bundle.path} --onnx "
                                 f"{onnx_path}` or pass the file")
            chosen = OnnxRuntime(onnx_path, batch=batch or SLICE_BATCH)
            if chosen.weights_sha256 != weights_digest(bundle.model):
                raise InputError(f"this ONNX file was exported from other weights than bundle {bundle.path}; "
                                 "export it again", onnx_path)
            if not _gives_labels(bundle, chosen):
                raise InputError(f"this ONNX file lacks the subtype outputs of bundle {bundle.path} (exported by an "
                                 "older ichdet); export it again", onnx_path)
        self.runtime = chosen or TorchRuntime(bundle.model, bundle.kind, precision=precision,
                                                                         batch=batch)

    def prepare(self, x: Volume | str | Path | np.ndarray, series_uid: str | None = None) -> tuple[Volume, np.ndarray]:
        """Read and prepare: -> (volume, prepared image (C, Z', S, S) float32 in [0, 1]), a series
        thinner than the bundle's training scans merged into slabs of their thickness (`self.prep`)."""
        volume = load_volume(x, series_uid)
        return volume, prepare_volume(volume, self.prep)

    def sequence(self, image: np.ndarray) -> torch.Tensor:
        """Prepared image (C, Z', S, S) -> what the network reads per slice, (Z', C', S, S)."""
        return volume_to_sequence(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), self.bundle.context)

    def score(self, image: np.ndarray) -> tuple[float, np.ndarray]:
        """Prepared image (C, Z', S, S) -> (scan probability, slice probabilities (Z',))."""
        return self.score_labels(image)[:2]

    def score_labels(self, image: np.ndarray) -> tuple[float, np.ndarray, dict[str, float] | None]:
        """Prepared image (C, Z', S, S) -> (scan probability, slice probabilities (Z',), subtypes):
        subtypes is {label: probability} over `bundle.labels` (the five subtypes, then "any", which
        equals the scan probability) for a bundle with a multi-label head, else None. Both come
        from the bundle kind's rule (`ichdet.models.kinds.Kind.score`), as in evaluation."""
        out = self.runtime(self.sequence(image))
        b = self.bundle
        scored = b.kind_spec.score(out, b.aggregate, b.svm)
        probability, slices = scored.probability, scored.slice_probabilities
        subtypes = None
        if b.has_subtypes:
            values = scored.label_probs
            if values is None or len(values) != len(b.labels):
                raise InputError(f"{self.runtime.describe()} gave no subtype probabilities for subtype bundle "
                                 f"{b.path}; export its ONNX file again")
            subtypes = {label: float(v) for label, v in zip(b.labels, values)}
        per_slice = np.asarray(slices, dtype=np.float64)
        return probability, per_slice, subtypes

    def predict(self, x: Volume | str | Path | np.ndarray, series_uid: str | None = None, name: str | None = None,
                heatmaps: str | Path | None = None, outputs: str | Path | None = None) -> ScanPrediction:
        """One scan -> ScanPrediction; with `heatmaps` (a folder), Grad-CAM overlays of the most
        suspicious slices and a contact sheet are written there; with `outputs` (a folder), a
        segmentation bundle's mask (NIfTI; DICOM SEG and SR for DICOM input)."""
        t0 = time.perf_counter()
        volume, image = self.prepare(x, series_uid)
        label = name if name is not None else (str(x) if isinstance(x, (str, Path)) else "<array>")
        return self.finish(volume, image, time.perf_counter() - t0, label, heatmaps, outputs)

    def finish(self, volume: Volume, image: np.ndarray, prepare_seconds: float, name: str,
               heatmaps: str | Path | None = None, outputs: str | Path | None = None) -> ScanPrediction:
        """A prepared scan -> ScanPrediction (`prepare_seconds` counts into its `seconds`)."""
        t0 = time.perf_counter()
        slices = slice_map(volume, self.prep)  # prepared slice k covers source slices slices.sources(k)
        if image.ndim != 4 or image.shape[1] != slices.n_prepared:
            raise ValueError(f"the prepared image of a {volume.shape[0]}-slice volume must be (C, {slices.n_prepared}, "
                             f"S, S) with this bundle's preprocessing, got shape {image.shape}")
        if isinstance(self.runtime, SegmentationRuntime):
            return self._finish_segmentation(volume, image, prepare_seconds + time.perf_counter() - t0, name, slices,
                                             heatmaps, outputs)
        probability, prepared, subtypes = self.score_labels(image)
        seconds = prepare_seconds + time.perf_counter() - t0
        top = _top_prepared(prepared, self.top_k)
        slabs = slab_plan(volume, self.prep.slab_mm)
        result = ScanPrediction(
            input=name, series_uid=volume.series_uid, probability=float(probability), threshold=self.bundle.threshold,
            decision=bool(probability >= self.bundle.threshold),
            slice_probabilities=[float(v) for v in slices.spread(prepared)],
            top_slices=[_slice_entry(slices, i, float(prepared[k])) for k in top for i in slices.sources(k)],
            subtypes=subtypes, seconds=seconds, shape=volume.shape, runtime=self.runtime.describe(),
            warnings=self._warnings(volume, slabs), slabs=None if slabs is None else slabs.to_dict())
        if heatmaps is not None:
            result.heatmaps = self.heatmaps(image, prepared, top, Path(heatmaps), slices, result.input)
        return result

    def _finish_segmentation(self, volume: Volume, image: np.ndarray, seconds: float, name: str, slices: SliceMap,
                             heatmaps: str | Path | None, outputs: str | Path | None) -> ScanPrediction:
        """A segmentation bundle's ScanPrediction: probability, slices and `volumes` from the mask on
        the input's own voxels; heatmaps are the maps of P(bleed); `outputs` gets the mask files."""
        from ichdet.engine.segment import segment_prepared
        from ichdet.inference.seg_outputs import volumes_entry, write_segmentation_outputs

        t0 = time.perf_counter()
        seg = segment_prepared(self.runtime, volume, image, self.prep, self.bundle.threshold)
        volumes = volumes_entry(seg.mask, volume.spacing)
        prepared = seg.slice_probabilities
        top = _top_prepared(prepared, self.top_k)
        result = ScanPrediction(
            input=name, series_uid=volume.series_uid, probability=float(seg.scan_probability),
            threshold=self.bundle.threshold, decision=bool(seg.scan_probability >= self.bundle.threshold),
            slice_probabilities=[float(v) for v in slices.spread(prepared)],
            top_slices=[_slice_entry(slices, i, float(prepared[k])) for k in top for i in slices.sources(k)],
            seconds=seconds + time.perf_counter() - t0, shape=volume.shape, runtime=self.runtime.describe(),
            warnings=self._warnings(volume, None), volumes=volumes,
            prepared_labels=seg.probabilities.argmax(0).astype(np.uint8),
            prepared_bleed=np.clip(1.0 - seg.probabilities[0], 0.0, 1.0))  # (Z, S, S) P(any bleed) per prepared pixel
        if heatmaps is not None:
            from ichdet.inference.heatmaps import write_heatmaps

            p_bleed = result.prepared_bleed
            result.heatmaps = write_heatmaps(Path(heatmaps), image, {k: p_bleed[k] for k in top}, prepared,
                                             title=name, z_labels=slices.labels())
        if outputs is not None:
            from ichdet import __version__

            result.outputs = write_segmentation_outputs(Path(outputs), volume, seg.mask, volumes, result.probability,
                                                        self.bundle.threshold, self.bundle.name, __version__)
        return result

    def _warnings(self, volume: Volume, slabs: SlabPlan | None) -> list[str]:
        notes = [str(w) for w in volume.info.get("warnings", [])]
        level = TISSUE_DISPLAY if volume.info.get("units") == "display" else TISSUE_HU
        tissue = float((volume.hu[:, ::4, ::4] > level).mean())  # every 16th pixel is plenty
        if tissue < MIN_TISSUE_FRACTION:
            notes.append(f"almost nothing but air in the input (tissue in {tissue:.1%} of it): is this a head CT?")
        if self.bundle.kind_spec.sequence and volume.shape[0] == 1:
            notes.append("a scan model given a single image: its probability means little")
        windows = self.bundle.prep.windows
        if volume.info.get("units") == "display" and self.bundle.training_units == "HU" and len(set(windows)) > 1:
            notes.append(f"a display image given to a model trained on CT windows ({', '.join(windows)}): "
                         "every channel gets the same grey image, so its probability means less")
        thicker = None if slabs is None else slabs.warning()
        if thicker:
            notes.append(thicker)
        return notes

    def heatmaps(self, image: np.ndarray, prepared: np.ndarray, top: list[int], out: Path, slices: SliceMap,
                 title: str) -> dict[str, Any]:
        """Grad-CAM (MONAI, on the slice encoder) of prepared slices `top` -> overlay PNGs + contact sheet."""
        from ichdet.inference.heatmaps import gradcam, write_heatmaps

        cams = gradcam(self.bundle.model, self.bundle.kind, self.sequence(image)[top])
        return write_heatmaps(out, image, dict(zip(top, cams)), prepared, title=title, z_labels=slices.labels())


def load_predictor(path: str | Path, **kwargs: Any) -> Predictor:
    """`Predictor(load_bundle(path), **kwargs)`: the bundle folder `path`, ready to predict."""
    from ichdet.engine.bundle import load_bundle

    return Predictor(load_bundle(path), **kwargs)
