"""`ichdet export`: a bundle's network -> one ONNX file that `predict --runtime onnx` (or any
onnxruntime user) can run.

Graph: inputs "slices" (N, C', S, S) float32 in [0, 1] and, for scan bundles, "features" (Z, F);
outputs "slice_probability" (N,), "slice_features" (N, F) and, for scan bundles,
"scan_probability" (1,) computed from "features"; a subtype bundle (a multi-label network, see
`ichdet.models.kinds.Kind.graph_labels`) adds "slice_labels" (N, 6) after "slice_features" and/or
"scan_labels" (1, 6) after "scan_probability", one sigmoid per label in `SUBTYPE_LABELS` order
("any" last, equal to the probability output). N and Z are dynamic. The bundle.json rides
along in the model's metadata (key "ichdet_bundle"), with a sha256 of the weights, so the file
carries its preprocessing, operating point and kind. The SVM heads stay in scikit-learn: an
ONNX file of an SVM bundle gives the features that the bundle's svm.joblib classifies.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from ichdet.engine.bundle import Bundle, load_bundle
from ichdet.errors import InputError
from ichdet.fileio import atomic_path
from ichdet.inference.runtime import ONNX_HASH_KEY, ONNX_META_KEY, SCAN_LABELS, SLICE_LABELS, weights_digest
from ichdet.models.graph import SequenceGraph, SliceGraph, split_model

MAX_SLICES = 8192  # upper bound of the dynamic slice axis


class _ExportGraph(nn.Module):
    """(slices (N, C', S, S), [features (Z, F)]) -> (slice_probability, slice_features[, slice_labels]
    [, scan_probability[, scan_labels]])."""

    def __init__(self, slices: SliceGraph, sequence: SequenceGraph | None):
        super().__init__()
        self.slices, self.sequence = slices, sequence

    def forward(self, slices: torch.Tensor, features: torch.Tensor | None = None):
        out = tuple(self.slices(slices))
        if self.sequence is None:
            return out
        scan = self.sequence(features)
        return out + (tuple(scan) if isinstance(scan, tuple) else (scan,))


def output_names(slices: SliceGraph, sequence: SequenceGraph | None) -> list[str]:
    """The ONNX graph's output names, in `_ExportGraph`'s order."""
    names = ["slice_probability", "slice_features"] + ([SLICE_LABELS] if slices.labels else [])
    if sequence is not None:
        names += ["scan_probability"] + ([SCAN_LABELS] if sequence.labels else [])
    return names


def export_onnx(bundle: Bundle | str | Path, out: str | Path, opset: int | None = None) -> Path:
    """Write the bundle's network as ONNX to `out` (atomically); returns the path."""
    try:
        import onnx
    except ImportError:
        raise InputError("ichdet export --onnx needs onnx and onnxscript: pip install 'ichdet[onnx]'") from None
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise InputError("the ONNX file name must end in .onnx", out)
    slice_graph, sequence_graph = split_model(b.model, b.kind)
    graph = _ExportGraph(slice_graph, sequence_graph).eval()
    size, channels = b.prep.size, len(b.prep.windows) * (2 * b.context + 1)
    slices = torch.rand(3, channels, size, size)
    n = torch.export.Dim("n", min=1, max=MAX_SLICES)
    names_out = output_names(slice_graph, sequence_graph)
    if sequence_graph is None:
        args, dims, names_in = (slices,), ({0: n},), ["slices"]
    else:
        feature_dim = b.model.encoder.feature_dim
        args = (slices, torch.rand(5, feature_dim))
        dims, names_in = ({0: n}, {0: torch.export.Dim("z", min=1, max=MAX_SLICES)}), ["slices", "features"]
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), _quiet_loggers():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(graph, args, None, dynamo=True, dynamic_shapes=dims, input_names=names_in,
                                        output_names=names_out, opset_version=opset, verbose=False, optimize=True)
        except Exception as e:  # noqa: BLE001 - the exporter raises many kinds
            raise RuntimeError(f"ONNX export of bundle {b.path} failed: {str(e).splitlines()[0][:300]}") from e
    model = program.model_proto
    onnx.helper.set_model_props(model, {ONNX_META_KEY: json.dumps(b.meta), ONNX_HASH_KEY: weights_digest(b.model)})
    model.doc_string = f"ichdet {b.kind} bundle {b.name}: slices (N, {channels}, {size}, {size}) in [0, 1]"
    with atomic_path(out) as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=False)
    return out


@contextlib.contextmanager
def _quiet_loggers():
    """The exporter logs its steps and missing torchvision ops; a CLI export should print one line."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "torch.fx")
    saved = {n: logging.getLogger(n).level for n in names}
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def verify_onnx(bundle: Bundle | str | Path, path: str | Path, n_slices: int = 5, seed: int = 0) -> float:
    """Max |onnxruntime - PyTorch fp32| over slice probabilities, features, the scan probability
    and, for a subtype bundle, the slice and scan label probabilities, on `n_slices` random slices
    of the bundle's input shape. InputError when the file lacks an output PyTorch gives."""
    import numpy as np

    from ichdet.inference.runtime import OnnxRuntime, TorchRuntime

    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    g = torch.Generator().manual_seed(seed)
    seq = torch.rand(n_slices, len(b.prep.windows) * (2 * b.context + 1), b.prep.size, b.prep.size, generator=g)
    ref = TorchRuntime(b.model, b.kind, precision="fp32", channels_last=False)(seq)
    got = OnnxRuntime(path)(seq)
    diffs = [np.abs(got.slice_probability - ref.slice_probability).max(), np.abs(got.features - ref.features).max()]
    for name in ("scan_probability", "slice_labels", "scan_labels"):
        want, have = getattr(ref, name), getattr(got, name)
        if want is None:
            continue
        if have is None:
            raise InputError(f"the ONNX file gives no {name!r} output, which bundle {b.path} has; export it again",
                             Path(path))
        diffs.append(np.abs(np.asarray(have) - np.asarray(want)).max())
    return float(max(diffs))
