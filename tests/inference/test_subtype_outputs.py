"""Subtype (multi-label) bundles at inference: the graphs' outputs, both runtimes and the ONNX file,
`ScanPrediction.subtypes` equal to what evaluation scores, Grad-CAM of the "any" logit, and the
`ichdet predict` table, JSON and CSV."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import ichdet
from ichdet.cli import run
from ichdet.datasets.prepared import PreparedCohort
from ichdet.engine.scoring import score_scan
from ichdet.errors import InputError
from ichdet.inference import OnnxRuntime, Predictor, TorchRuntime
from ichdet.inference.export import export_onnx, verify_onnx
from ichdet.models.graph import SliceGraph, split_model
from ichdet.models.heads import MULTILABEL
from ichdet.models.kinds import get_kind
from ichdet.inference.heatmaps import bleed_logit, gradcam
from ichdet.inference.result import SUBTYPE_COLUMNS
from ichdet.metrics import SUBTYPE_LABELS

S = 64


def _scans(cohort: Path) -> list[Path]:
    return sorted((cohort.parent / "scans").iterdir())


@pytest.fixture(scope="module")
def ml_exported(ml_bundles, tmp_path_factory) -> dict[str, Path]:
    """ONNX files of the multi-label slice CNN (shared by the slice and aggregate bundles: same
    weights) and of the multi-label ScanLSTM."""
    root = tmp_path_factory.mktemp("ml_onnx")
    return {kind: export_onnx(ml_bundles[kind], root / f"{kind}.onnx") for kind in ("slice", "scan")}


# ---- graphs ----------------------------------------------------------------------------------
@torch.no_grad()
def test_graphs_of_multilabel_networks(ml_bundles, bundles):
    cnn = ichdet.load_bundle(ml_bundles["slice"]).model
    x = torch.rand(5, 1, S, S, generator=torch.Generator().manual_seed(0))
    slices, seq = split_model(cnn, "slice")
    assert seq is None and get_kind("slice").graph_labels(cnn) == (True, False)
    p, f, labels = slices(x)
    logits = cnn(x)
    assert labels.shape == (5, 6)
    torch.testing.assert_close(labels, torch.sigmoid(logits), rtol=0, atol=1e-6)
    assert torch.equal(p, labels[:, -1])  # P(bleed) is P("any"), not a softmax over six logits
    torch.testing.assert_close(p, MULTILABEL.probability(logits), rtol=0, atol=1e-6)
    assert not torch.allclose(p, torch.softmax(logits, 1)[:, 1], atol=1e-3)
    # an SVM kind on the same network reports no labels, but its slice probability is still P("any")
    svm_slices, _ = split_model(cnn, "feature_svm")
    assert get_kind("feature_svm").graph_labels(cnn) == (False, False)
    out = svm_slices(x)
    assert len(out) == 2 and torch.equal(out[0], p)

    lstm = ichdet.load_bundle(ml_bundles["scan"]).model
    assert get_kind("scan").graph_labels(lstm) == (True, True)
    slices, seq = split_model(lstm, "scan")
    _, feats, _ = slices(x)
    q, scan_labels = seq(feats)
    assert q.shape == (1,) and scan_labels.shape == (1, 6) and torch.equal(q, scan_labels[:, -1])
    # the split graphs give what the whole network gives on the scan (B=1, Z=5 slices)
    np.testing.assert_allclose(scan_labels[0].numpy(), torch.sigmoid(lstm.eval()(x.unsqueeze(0)))[0].numpy(),
                               rtol=0, atol=1e-6)
    assert get_kind("scan").graph_labels(ichdet.load_bundle(ml_bundles["scan_binary_encoder"]).model) == (False, True)
    # binary bundles: the graphs are as they were
    b = ichdet.load_bundle(bundles["scan"])
    slices, seq = split_model(b.model, "scan")
    assert len(slices(x)) == 2 and seq(slices(x)[1]).shape == (1,)
    with pytest.raises(ValueError, match="two-class head"):
        SliceGraph(b.model.encoder, labels=True)


def test_torch_runtime_outputs(ml_bundles, bundles):
    seq = torch.rand(7, 1, S, S, generator=torch.Generator().manual_seed(1))
    cases = (("slice", True, False), ("scan", True, True), ("scan_binary_encoder", False, True))
    for kind, has_slice, has_scan in cases:
        b = ichdet.load_bundle(ml_bundles[kind])
        out = TorchRuntime(b.model, b.kind, precision="fp32", batch=3)(seq)
        assert (out.slice_labels is not None, out.scan_labels is not None) == (has_slice, has_scan)
        if has_slice:
            assert out.slice_labels.shape == (7, 6) and np.array_equal(out.slice_labels[:, -1], out.slice_probability)
        if has_scan:
            assert out.scan_labels.shape == (6,) and out.scan_labels[-1] == out.scan_probability
    out = TorchRuntime(ichdet.load_bundle(bundles["scan"]).model, "scan", precision="fp32")(seq)
    assert out.slice_labels is None and out.scan_labels is None


# ---- predictions equal evaluation's scores ---------------------------------------------------
@pytest.mark.parametrize("kind,runtime", [("slice", "torch"), ("aggregate", "torch"), ("scan", "torch"),
                                          ("scan_binary_encoder", "torch"), ("slice", "onnx"),
                                          ("aggregate", "onnx"), ("scan", "onnx")])
def test_subtypes_equal_scan_outputs(cohort, ml_bundles, ml_exported, kind, runtime):
    """ScanPrediction.subtypes = engine.scoring.score_scan's label probabilities (which
    `evaluate` scores) within 1e-6, in SUBTYPE_LABELS order, "any" exactly the probability."""
    b = ichdet.load_bundle(ml_bundles[kind])
    onnx_path = ml_exported["scan" if kind == "scan" else "slice"] if runtime == "onnx" else None
    predictor = Predictor(b, runtime=runtime, precision="fp32", onnx_path=onnx_path)
    assert predictor.runtime.name == runtime
    pc = PreparedCohort(cohort, b.prep)
    got = []
    for sid in pc.scan_ids()[:3]:
        r = predictor.predict(pc.row(sid).resolved_path(pc.root))
        want = score_scan(b.kind, b.model, pc[sid].image, b.context, b.aggregate, b.svm)
        score, labels = want.probability, want.label_probs
        assert list(r.subtypes) == list(SUBTYPE_LABELS)
        assert r.subtypes["any"] == r.probability
        np.testing.assert_allclose(list(r.subtypes.values()), labels, rtol=0, atol=1e-6)
        assert abs(r.probability - score) < 1e-6
        got.append(list(r.subtypes.values()))
    assert len({tuple(np.round(g, 6)) for g in got}) == 3  # the scans differ, so do their subtypes
    doc = json.loads(json.dumps(r.to_dict()))
    assert doc["subtypes"] == r.subtypes


def test_no_subtypes_for_svm_kinds_and_binary_bundles(cohort, ml_bundles, bundles):
    scan = _scans(cohort)[0]
    b = ichdet.load_bundle(ml_bundles["feature_svm"])
    assert not b.has_subtypes and ichdet.Predictor(b).predict(scan).subtypes is None
    for kind in ("slice", "scan"):
        assert ichdet.load_predictor(bundles[kind]).predict(scan).subtypes is None


# ---- ONNX ------------------------------------------------------------------------------------
def test_onnx_label_outputs(ml_bundles, ml_exported, bundles):
    names = {k: [o.name for o in onnx.load(str(p)).graph.output] for k, p in ml_exported.items()}
    assert names == {"slice": ["slice_probability", "slice_features", "slice_labels"],
                     "scan": ["slice_probability", "slice_features", "slice_labels", "scan_probability", "scan_labels"]}
    for kind in ("slice", "scan"):
        b = ichdet.load_bundle(ml_bundles[kind])
        seq = torch.rand(9, 1, S, S, generator=torch.Generator().manual_seed(2))
        got = OnnxRuntime(ml_exported[kind], batch=4)(seq)
        want = TorchRuntime(b.model, b.kind, precision="fp32", channels_last=False)(seq)
        np.testing.assert_allclose(got.slice_labels, want.slice_labels, rtol=0, atol=1e-5)
        assert got.slice_labels.shape == (9, 6)
        if kind == "scan":
            np.testing.assert_allclose(got.scan_labels, want.scan_labels, rtol=0, atol=1e-5)
            assert got.scan_labels[-1] == got.scan_probability
        assert verify_onnx(b, ml_exported[kind]) < 1e-4
    # the CLI's export line checks them too
    assert verify_onnx(ichdet.load_bundle(ml_bundles["aggregate"]), ml_exported["slice"]) < 1e-4


def _strip_output(src: Path, dst: Path, name: str) -> Path:
    """An ONNX file as an older ichdet wrote it for this bundle: without output `name`."""
    model = onnx.load(str(src))
    keep = [o for o in model.graph.output if o.name != name]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    onnx.save_model(model, str(dst))
    return dst


def test_an_older_onnx_without_label_outputs_is_refused(ml_bundles, ml_exported, tmp_path):
    old = _strip_output(ml_exported["scan"], tmp_path / "old.onnx", "scan_labels")
    with pytest.raises(InputError) as e:
        OnnxRuntime(old)
    assert str(e.value) == (f"{old}: this ONNX file of a subtype bundle has no 'scan_labels' output (exported by an "
                            "older ichdet); export it again with ichdet export")
    b = ichdet.load_bundle(ml_bundles["scan"])
    with pytest.raises(InputError, match="has no 'scan_labels' output"):
        Predictor(b, runtime="onnx", onnx_path=old)
    with pytest.raises(InputError, match="has no 'scan_labels' output"):
        verify_onnx(b, old)
    # `auto` never picks such a file: it runs PyTorch
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(ml_bundles["scan"], copy)
    shutil.copy(old, copy / "model.onnx")
    assert isinstance(Predictor(ichdet.load_bundle(copy)).runtime, TorchRuntime)
    shutil.copy(ml_exported["scan"], copy / "model.onnx")
    assert isinstance(Predictor(ichdet.load_bundle(copy)).runtime, OnnxRuntime)
    # the slice labels of the encoder are also required where the bundle's network gives them
    old_slices = _strip_output(ml_exported["scan"], tmp_path / "old2.onnx", "slice_labels")
    with pytest.raises(InputError, match=r"lacks the subtype outputs of bundle .*; export it again$"):
        Predictor(b, runtime="onnx", onnx_path=old_slices)


# ---- Grad-CAM --------------------------------------------------------------------------------
def test_gradcam_explains_the_any_logit(ml_bundles, bundles):
    cnn = ichdet.load_bundle(ml_bundles["slice"]).model
    lstm = ichdet.load_bundle(ml_bundles["scan"]).model
    lstm_bin = ichdet.load_bundle(ml_bundles["scan_binary_encoder"]).model
    assert bleed_logit(cnn, "slice") == 5 and bleed_logit(lstm, "scan") == 5 and bleed_logit(lstm_bin, "scan") == 1
    assert bleed_logit(ichdet.load_bundle(bundles["slice"]).model, "slice") == 1
    x = torch.rand(2, 1, S, S, generator=torch.Generator().manual_seed(3))
    default = gradcam(cnn, "slice", x)
    np.testing.assert_array_equal(default, gradcam(cnn, "slice", x, class_index=5))
    with torch.no_grad():
        top = int(cnn(x)[0].argmax())
    for c in {0, 1, top} - {5}:  # not another logit, nor whichever is largest
        assert np.abs(default - gradcam(cnn, "slice", x, class_index=c)).max() > 1e-3
    np.testing.assert_array_equal(gradcam(lstm, "scan", x), gradcam(lstm, "scan", x, class_index=5))


def test_heatmaps_of_a_subtype_bundle(cohort, ml_bundles, tmp_path):
    b = ichdet.load_bundle(ml_bundles["slice"])
    p = Predictor(b)
    r = p.predict(_scans(cohort)[0], heatmaps=tmp_path)
    assert r.subtypes is not None and Path(r.heatmaps["contact_sheet"]).is_file()


# ---- the CLI ---------------------------------------------------------------------------------
def test_cli_predict_shows_subtypes(cohort, ml_bundles, bundles, tmp_path, capsys):
    scans = [str(s) for s in _scans(cohort)[:2]]
    out = tmp_path / "out"
    assert run(["predict", *scans, "--model", str(ml_bundles["scan"]), "--out", str(out), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    doc = json.loads((out / "predictions.json").read_text())
    assert len(lines) == 2 + 2 * 2  # header, rule, then per scan its row and its subtype line
    for i, s in enumerate(doc["scans"]):
        assert lines[2 + 2 * i].startswith(s["input"]) and f"{s['probability']:.3f}" in lines[2 + 2 * i]
        assert lines[3 + 2 * i] == "  subtypes: " + "  ".join(f"{k} {s['subtypes'][k]:.3f}" for k in SUBTYPE_COLUMNS)
        assert list(s["subtypes"]) == list(SUBTYPE_LABELS) and s["subtypes"]["any"] == s["probability"]
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert list(rows[0])[-6:] == [*SUBTYPE_COLUMNS, "error"]
    for row, s in zip(rows, doc["scans"]):
        assert [float(row[k]) for k in SUBTYPE_COLUMNS] == [s["subtypes"][k] for k in SUBTYPE_COLUMNS]
    assert run(["predict", scans[0], "--model", str(ml_bundles["aggregate"]), "--json"]) == 0
    (s,) = json.loads(capsys.readouterr().out)["scans"]
    assert list(s["subtypes"]) == list(SUBTYPE_LABELS) and s["subtypes"]["any"] == s["probability"]
    # a binary bundle: no subtype line, empty subtype cells, "subtypes": null
    assert run(["predict", scans[0], "--model", str(bundles["slice"]), "--out", str(tmp_path / "bin"), "--quiet"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    (row,) = csv.DictReader((tmp_path / "bin" / "predictions.csv").open())
    assert all(row[k] == "" for k in SUBTYPE_COLUMNS)
    assert json.loads((tmp_path / "bin" / "predictions.json").read_text())["scans"][0]["subtypes"] is None
