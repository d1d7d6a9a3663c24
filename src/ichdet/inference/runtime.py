"""Runtimes that run a bundle's network on one scan: PyTorch (eager, optionally channels-last,
autocast of the slice encoder where the device does it natively, or `torch.compile`; CPU or GPU)
and onnxruntime on a file written by `ichdet export`.

Both take the slice sequence (Z, C', S, S) float32 in [0, 1] and return `ModelOutputs`; slices
go through the encoder a few at a time, so memory does not grow with the scan's length.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ichdet.errors import InputError
from ichdet.models.fusion import inference_copy
from ichdet.models.graph import ModelOutputs, run_graphs, split_model

SLICE_BATCH = 16  # slices per onnxruntime pass
BATCH_PIXELS = 131072  # slices x S x S per PyTorch encoder pass: 2 at 256 px, whose activations stay in cache
ONNX_META_KEY = "ichdet_bundle"  # ONNX metadata_props key holding the bundle.json the graph came from
ONNX_HASH_KEY = "ichdet_weights_sha256"
SLICE_LABELS, SCAN_LABELS = "slice_labels", "scan_labels"  # ONNX outputs of subtype bundles


def _as_tensor(seq: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(seq, dtype=np.float32) if not isinstance(seq, torch.Tensor) else seq)
    if x.ndim != 4 or x.shape[0] == 0:
        raise InputError(f"a scan for the model must be slices (Z, C, S, S) with Z >= 1, got shape {tuple(x.shape)}")
    return x.float()


class TorchRuntime:
    """A bundle's network in PyTorch, on the CPU or a GPU.

    precision: "auto" (bf16 autocast of the slice encoder where the device does bf16 natively,
        else fp32 on a CPU and fp16 on a GPU), "fp32", "bf16" (where it would be emulated: a
        warning and fp32) or "fp16" (GPUs); `ichdet.engine.precision` decides, and `.precision`
        holds the dtype that runs. bf16 moves probabilities from fp32's by up to about 0.02 on
        trained models. The LSTM always runs in fp32. channels_last: NHWC memory format for the
        convolutions (faster with oneDNN, same numbers to float rounding). compile:
        `torch.compile` the slice graph (a one-off cost of tens of seconds). device: "cpu",
        "cuda" (inputs copied from pinned memory without blocking) or None (a GPU when there is one).
    """

    name = "torch"

    def __init__(self, model: torch.nn.Module, kind: str, precision: str = "auto", channels_last: bool = True,
                 compile: bool = False, batch: int | None = None, device: str | torch.device | None = None):
        from ichdet.engine.precision import default_device, resolve_precision

        self.device = torch.device(device) if device is not None else default_device()
        self.mode = resolve_precision(precision, self.device)  # InputError for an unknown precision
        if batch is not None and (not isinstance(batch, int) or batch < 1):
            raise InputError(f"slice batch must be a positive integer, got {batch!r}")
        self.kind, self.precision, self.channels_last, self.batch = kind, self.mode.dtype, bool(channels_last), batch
        net = inference_copy(model, self.channels_last).to(self.device)
        self.slice_graph, self.sequence_graph = split_model(net, kind)
        self._slices = torch.compile(self.slice_graph, dynamic=True) if compile else self.slice_graph
        self.compiled = bool(compile)

    def slice_batch(self, size: int) -> int:
        """Slices per encoder pass for S x S slices: `batch`, else BATCH_PIXELS / S^2 (1..64)."""
        return self.batch or max(1, min(64, BATCH_PIXELS // (size * size)))

    def describe(self) -> str:
        parts = ([self.device.type] if self.device.type != "cpu" else []) + [self.precision] + \
            (["channels-last"] if self.channels_last else []) + (["compiled"] if self.compiled else [])
        return f"torch ({', '.join(parts)})"

    @torch.inference_mode()
    def __call__(self, seq: np.ndarray | torch.Tensor) -> ModelOutputs:
        """seq (Z, C', S, S) -> ModelOutputs."""
        x = _as_tensor(seq)
        if self.device.type == "cuda":
            x = x.pin_memory()

        def prepare(chunk: torch.Tensor) -> torch.Tensor:
            chunk = chunk.to(self.device, non_blocking=True)
            return chunk.contiguous(memory_format=torch.channels_last) if self.channels_last else chunk

        return run_graphs(self._slices, self.sequence_graph, x, self.slice_batch(x.shape[-1]), prepare,
                          self.mode.autocast)


class SegmentationRuntime:
    """A segmentation bundle's network (seg_unet) in PyTorch on the CPU: a prepared scan (C, Z, S, S)
    in [0, 1] -> float32 class probabilities (6, Z, S, S), `batch` slices per pass (default
    `SEG_BATCH`), channels-last, `precision` as for TorchRuntime (bf16 autocast only where the CPU
    has bf16 units). `fold`: batch norms folded into the convolutions (`inference_copy`); False
    only to measure what that saves."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, precision: str = "auto", batch: int | None = None,
                 channels_last: bool = True, fold: bool = True):
        from ichdet.engine.precision import resolve_precision
        from ichdet.models.seg_unet import SEG_BATCH

        self.mode = resolve_precision(precision, "cpu")  # InputError for an unknown precision
        if batch is not None and (not isinstance(batch, int) or batch < 1):
            raise InputError(f"slice batch must be a positive integer, got {batch!r}")
        self.precision, self.batch, self.channels_last = self.mode.dtype, batch or SEG_BATCH, bool(channels_last)
        self.model, self.fold = inference_copy(model, self.channels_last, fold), bool(fold)

    def describe(self) -> str:
        parts = [self.precision] + (["channels-last"] if self.channels_last else []) + \
            ([] if self.fold else ["batch norm unfolded"])
        return f"torch ({', '.join(parts)})"

    @torch.inference_mode()
    def __call__(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """image (C, Z, S, S) -> class probabilities (6, Z, S, S) float32."""
        from ichdet.models.seg_unet import segment_slices

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return segment_slices(self.model, image, self.batch, self.channels_last)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's state dict values in order (ties an ONNX file to the bundle's weights)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class OnnxRuntime:
    """A network exported by `ichdet.inference.export.export_onnx`, run by onnxruntime (CPU).

    The graph has inputs "slices" (N, C', S, S) and, for scan bundles, "features" (Z, F); its
    outputs are "slice_probability" (N,), "slice_features" (N, F) and "scan_probability" (1,),
    and for subtype bundles "slice_labels" (N, L) and/or "scan_labels" (1, L) (see
    `ichdet.models.kinds.Kind.graph_labels`). The unused input of a call is fed empty, which
    onnxruntime skips at no cost. A file of a subtype bundle without the label outputs it needs
    (exported before ichdet wrote them) is refused: export it again.
    """

    name = "onnx"

    def __init__(self, path: str | Path, batch: int = SLICE_BATCH, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise InputError("--runtime onnx needs onnxruntime: pip install 'ichdet[onnx]'") from None
        path = Path(path)
        if not path.is_file():
            raise InputError("no such ONNX file", path)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise InputError(f"onnxruntime cannot load this file ({str(e).splitlines()[0][:200]})", path) from None
        props = self.session.get_modelmeta().custom_metadata_map
        if ONNX_META_KEY not in props:
            raise InputError("not an ichdet ONNX export (no ichdet_bundle metadata); write one with ichdet export", path)
        self.path, self.batch = path, batch
        self.meta: dict[str, Any] = json.loads(props[ONNX_META_KEY])
        self.weights_sha256 = props.get(ONNX_HASH_KEY, "")
        self.kind = self.meta["kind"]
        inputs = {i.name: i for i in self.session.get_inputs()}
        self._has_sequence = "features" in inputs
        self._feature_dim = int(inputs["features"].shape[1]) if self._has_sequence else 0
        self._slice_shape = tuple(inputs["slices"].shape[1:])
        outputs = {o.name for o in self.session.get_outputs()}
        self.has_slice_labels, self.has_scan_labels = SLICE_LABELS in outputs, SCAN_LABELS in outputs
        self.labels = tuple(self.meta.get("labels", ("any",)))
        need = SCAN_LABELS if self.kind == "scan" else SLICE_LABELS
        if len(self.labels) > 1 and need not in outputs:
            raise InputError(f"this ONNX file of a subtype bundle has no {need!r} output (exported by an older "
                             "ichdet); export it again with ichdet export", path)

    def describe(self) -> str:
        return f"onnxruntime ({self.path.name})"

    def __call__(self, seq: np.ndarray | torch.Tensor) -> ModelOutputs:
        """seq (Z, C', S, S) -> ModelOutputs."""
        x = _as_tensor(seq).numpy()
        if tuple(x.shape[1:]) != self._slice_shape:
            raise InputError(f"the ONNX graph takes slices of shape {self._slice_shape}, got {tuple(x.shape[1:])}", self.path)
        empty_f = np.zeros((0, self._feature_dim), np.float32)
        probs, feats, labels = [], [], []
        names = ["slice_probability", "slice_features"] + ([SLICE_LABELS] if self.has_slice_labels else [])
        for i in range(0, x.shape[0], self.batch):
            feed = {"slices": np.ascontiguousarray(x[i:i + self.batch])}
            if self._has_sequence:
                feed["features"] = empty_f
            out = self.session.run(names, feed)
            probs.append(out[0])
            feats.append(out[1])
            if self.has_slice_labels:
                labels.append(out[2])
        features = np.concatenate(feats).astype(np.float32, copy=False)
        scan = scan_labels = None
        if self._has_sequence:
            empty_x = np.zeros((0, *self._slice_shape), np.float32)
            names = ["scan_probability"] + ([SCAN_LABELS] if self.has_scan_labels else [])
            out = self.session.run(names, {"slices": empty_x, "features": features})
            scan = float(out[0][0])
            if self.has_scan_labels:
                scan_labels = out[1][0].astype(np.float64)
        return ModelOutputs(np.concatenate(probs).astype(np.float64), features, scan,
                            np.concatenate(labels).astype(np.float64) if labels else None, scan_labels)
