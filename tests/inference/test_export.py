"""`ichdet export` -> ONNX, and `predict --runtime onnx`: onnxruntime's outputs equal PyTorch's within 1e-4."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import ichdet
from ichdet.cli import run
from ichdet.errors import InputError
from ichdet.inference import OnnxRuntime, Predictor, TorchRuntime
from ichdet.inference.export import export_onnx, verify_onnx


@pytest.fixture(scope="module")
def exported(bundles, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    return {kind: export_onnx(bundles[kind], root / f"{kind}.onnx") for kind in ("slice", "scan", "context")}


@pytest.mark.parametrize("kind", ["slice", "scan", "context"])
def test_onnx_outputs_equal_pytorch(bundles, exported, kind):
    b = ichdet.load_bundle(bundles[kind])
    rt = OnnxRuntime(exported[kind], batch=3)  # batches of 3: the dynamic slice axis and chunking
    ref = TorchRuntime(b.model, b.kind, precision="fp32", channels_last=False)
    for z in (1, 7, 20):
        seq = torch.rand(z, rt._slice_shape[0], 64, 64, generator=torch.Generator().manual_seed(z))
        got, want = rt(seq), ref(seq)
        assert got.slice_probability.shape == (z,) and got.features.shape == (z, 16)
        np.testing.assert_allclose(got.slice_probability, want.slice_probability, rtol=0, atol=1e-4)
        np.testing.assert_allclose(got.features, want.features, rtol=0, atol=1e-4)
        if kind == "scan":
            assert abs(got.scan_probability - want.scan_probability) < 1e-4
        else:
            assert got.scan_probability is None
    assert verify_onnx(b, exported[kind]) < 1e-4


def test_onnx_file_carries_the_bundle(bundles, exported):
    model = onnx.load(str(exported["scan"]))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["ichdet_bundle"]) == ichdet.load_bundle(bundles["scan"]).meta
    assert [i.name for i in model.graph.input] == ["slices", "features"]
    assert [o.name for o in model.graph.output] == ["slice_probability", "slice_features", "scan_probability"]
    assert OnnxRuntime(exported["scan"]).kind == "scan"


def test_predict_with_onnx_runtime_matches_torch(cohort, bundles, exported):
    b = ichdet.load_bundle(bundles["scan"])
    scan = sorted((cohort.parent / "scans").iterdir())[1]
    a = Predictor(b, precision="fp32").predict(scan)
    o = Predictor(b, runtime="onnx", onnx_path=exported["scan"]).predict(scan)
    assert o.runtime == "onnxruntime (scan.onnx)"
    assert abs(o.probability - a.probability) < 1e-4
    np.testing.assert_allclose(o.slice_probabilities, a.slice_probabilities, rtol=0, atol=1e-4)
    assert [t["index"] for t in o.top_slices] == [t["index"] for t in a.top_slices]


def test_onnx_of_other_weights_or_no_onnx(bundles, exported, tmp_path):
    other = ichdet.load_bundle(bundles["aggregate"])  # same architecture as "slice", different bundle...
    with torch.no_grad():
        other.model.head.linear.bias.add_(1.0)  # ...and now different weights
    with pytest.raises(InputError, match="exported from other weights than bundle .*; export it again$"):
        Predictor(other, runtime="onnx", onnx_path=exported["slice"])
    with pytest.raises(InputError) as e:
        Predictor(other, runtime="onnx")
    where = bundles["aggregate"] / "model.onnx"
    assert str(e.value) == (f"no ONNX file at {where}: run `ichdet export --model {bundles['aggregate']} --onnx "
                            f"{where}` or pass the file")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match=f"^{junk}: onnxruntime cannot load this file"):
        OnnxRuntime(junk)
    with pytest.raises(InputError, match=r"the ONNX file name must end in \.onnx$"):
        export_onnx(bundles["slice"], tmp_path / "model.bin")


def test_cli_export_and_predict_onnx(cohort, bundles, tmp_path, capsys):
    scan = str(sorted((cohort.parent / "scans").iterdir())[0])
    out = tmp_path / "m.onnx"
    assert run(["export", "--model", str(bundles["slice"]), "--onnx", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"onnx: {out} (") and "max |difference|" in line
    diff = float(line.rsplit(" ", 1)[1])
    assert diff < 1e-4
    assert run(["predict", scan, "--model", str(bundles["slice"]), "--runtime", "onnx", "--onnx", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"]["runtime"] == "onnxruntime (m.onnx)" and len(doc["scans"]) == 1
    # without --onnx, the bundle's own model.onnx is expected
    assert run(["predict", scan, "--model", str(bundles["slice"]), "--runtime", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"ichdet: error: no ONNX file at {bundles['slice'] / 'model.onnx'}: run `ichdet export --model "
                   f"{bundles['slice']} --onnx {bundles['slice'] / 'model.onnx'}` or pass the file")


def test_auto_runtime_takes_the_bundles_own_onnx(bundles, exported, tmp_path):
    """`auto` uses onnxruntime only on an export of exactly these weights, and only for fp32 or auto
    precision (onnxruntime is fp32, which auto allows everywhere)."""
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundles["scan"], copy)
    b = ichdet.load_bundle(copy)
    assert isinstance(Predictor(b).runtime, TorchRuntime)  # no model.onnx yet
    shutil.copy(exported["scan"], copy / "model.onnx")
    assert isinstance(Predictor(b).runtime, OnnxRuntime)
    assert isinstance(Predictor(b, precision="fp32").runtime, OnnxRuntime)
    with warnings.catch_warnings():  # bf16 where it is not native: a warning, then fp32 in PyTorch
        warnings.simplefilter("ignore")
        assert isinstance(Predictor(b, precision="bf16").runtime, TorchRuntime)
    assert isinstance(Predictor(b, runtime="torch").runtime, TorchRuntime)
    shutil.copy(exported["slice"], copy / "model.onnx")  # another bundle's export: not used
    assert isinstance(Predictor(b).runtime, TorchRuntime)


def test_onnx_of_a_pretrained_encoder_scan_model(tmp_path):
    """EfficientNet-Lite0 (TF "SAME" padding, ReLU6, depthwise convolutions) + BiLSTM exports to ONNX
    and onnxruntime gives PyTorch's outputs within 1e-4, at sizes whose padding is uneven."""
    from ichdet.engine.bundle import save_bundle
    from ichdet.models import create_model
    from ichdet.preprocess import PrepSpec

    torch.manual_seed(0)
    encoder = create_model("efficientnet_lite0", num_classes=2, normalize=True)
    model = create_model("scan_lstm", encoder=encoder, hidden=8).eval()
    kw = {"encoder_name": "efficientnet_lite0", "encoder_kw": encoder.config(), "hidden": 8}
    path = save_bundle(tmp_path / "b", model=model, model_name="scan_lstm", model_kwargs=kw, kind="scan",
                       prep=PrepSpec(windows=("brain", "subdural", "bone"), size=72), context=0,
                       operating_point={"method": "fixed", "threshold": 0.5}, metrics={}, config_yaml="",
                       data_hash="test")
    b = ichdet.load_bundle(path)
    onnx_path = export_onnx(b, tmp_path / "effnet.onnx")
    rt = OnnxRuntime(onnx_path, batch=4)
    ref = TorchRuntime(b.model, b.kind, precision="fp32", channels_last=False)
    seq = torch.rand(6, 3, 72, 72, generator=torch.Generator().manual_seed(1))
    got, want = rt(seq), ref(seq)
    assert got.features.shape == (6, 1280)
    np.testing.assert_allclose(got.slice_probability, want.slice_probability, rtol=0, atol=1e-4)
    np.testing.assert_allclose(got.features, want.features, rtol=0, atol=1e-4)
    assert abs(got.scan_probability - want.scan_probability) < 1e-4
    assert verify_onnx(b, onnx_path) < 1e-4
