"""benchmarks/bench_infer.py: a quick run (tiny model, one 8-slice 64 x 64 scan) writes the documented JSON,
on any x86-64 CPU: where bf16 is not native (e.g. with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2) the
bf16 variants are skipped with a reason and no bf16 peak is measured."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_infer.py"

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from ichdet.engine.precision import cpu_features  # noqa: E402

VARIANTS = ["eager-fp32", "eager-fp32-cl", "bf16", "onnx"]
FP32_VARIANTS = [v for v in VARIANTS if v != "bf16"]
ROW_KEYS = {"case", "metric", "unit", "ichdet", "peer", "peer_value", "ratio", "goal", "goal_met", "input", "variant",
            "precision"}


def _run(tmp_path, variants, *args, timeout=240) -> dict:
    out = tmp_path / "bench_infer.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--quick", "--variants", ",".join(variants),
                           "--cases", "synthetic", *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "end_to_end_seconds" in proc.stdout and "model_gflops" in proc.stdout  # the table
    d = json.loads(out.read_text())
    assert set(d) >= {"machine", "settings", "peaks", "summary", "skipped", "results", "fastest_agreeing_variant"}
    for key in ("cpu_model", "logical_cores", "python", "torch", "onnxruntime", "numpy", "torch_threads",
                "cpu_features"):
        assert key in d["machine"]
    assert d["machine"]["cpu_features"] == cpu_features().to_dict()  # this CPU, ISA and overrides
    s = d["settings"]
    assert s["quick"] is True and s["repeats"] == 1 and s["variants_asked"] == variants and s["cases"] == ["synthetic"]
    assert s["peak_rss_mb"] > 0 and s["model"]["model"] == "scan_lstm"
    assert d["peaks"]["fp32_gflops"] > 0 and math.isfinite(d["peaks"]["fp32_gflops"])
    for r in d["results"]:
        assert set(r) >= ROW_KEYS, sorted(ROW_KEYS - set(r))
        assert r["precision"] in (("fp32", "bf16") if r["variant"] else (None,))
        assert isinstance(r["ichdet"], float) and r["ichdet"] >= 0 and math.isfinite(r["ichdet"])
        if r["ratio"] is not None:
            assert r["ratio"] == pytest.approx(r["ichdet"] / r["peer_value"])
    return d


def _check_bf16_skipped(d: dict, why: str) -> None:
    """The bf16 variant left out with a one-line reason naming the CPU, and no bf16 peak measured."""
    describe = d["machine"]["cpu_features"]["describe"]
    assert [s["case"] for s in d["skipped"]] == ["variant bf16"]  # cases and the other variants were named
    reason = d["skipped"][0]["reason"]
    assert why in reason and describe in reason and "\n" not in reason
    assert d["peaks"]["bf16_gflops"] is None and d["peaks"]["matmul_sizes"]["bf16"] is None
    assert all("bf16" not in p for p in d["peaks"]["runs"].values())
    assert "bf16" not in d["settings"]["variants"] and d["settings"]["precision"]["bf16_variants_run"] is False
    rows = d["results"]
    assert "bf16" not in {r["variant"] for r in rows}
    assert {r["precision"] for r in rows if r["variant"]} == {"fp32"}
    assert {r["peak_dtype"] for r in rows if r["metric"] == "model_gflops"} == {"fp32"}
    assert "bf16" not in d["summary"]["by_input"]["synthetic"]["all"]


def test_bench_infer_quick(tmp_path):
    """Default --precision auto: the bf16 variant's rows where bf16 is native, the variant skipped elsewhere."""
    d = _run(tmp_path, VARIANTS)
    native = cpu_features().native_bf16
    ran = VARIANTS if native else FP32_VARIANTS
    assert d["settings"]["variants"] == ran and d["settings"]["precision"]["requested"] == "auto"
    if native:
        assert d["skipped"] == []  # both cases and variants were named: nothing left out
        assert d["peaks"]["bf16_gflops"] > 0 and d["settings"]["precision"]["bf16_variants_run"] is True
    else:
        _check_bf16_skipped(d, "not native")
    rows = d["results"]

    def one(metric, variant, **kw):
        found = [r for r in rows if r["metric"] == metric and r["variant"] == variant
                 and all(r.get(k) == v for k, v in kw.items())]
        assert len(found) == 1, (metric, variant, kw, len(found))
        return found[0]

    for metric in ("read_seconds", "prepare_seconds"):
        r = one(metric, None, input="synthetic")
        assert 0 < r["ichdet"] and r["peer_value"] == pytest.approx(one("end_to_end_seconds", "eager-fp32")["ichdet"])

    base = one("end_to_end_seconds", "eager-fp32")
    assert base["ratio"] == pytest.approx(1.0) and base["ichdet"] == base["peer_value"]  # its own peer
    assert one("model_seconds", "eager-fp32")["ratio"] == pytest.approx(1.0)
    assert base["shape"] == [8, 64, 64] and base["flops_per_scan"] > 0
    for v in ran:
        e2e = one("end_to_end_seconds", v)
        assert e2e["ichdet"] > 0 and e2e["peer_value"] == base["ichdet"] and len(e2e["wall_seconds"]) == 1
        assert e2e["goal_met"] is None  # the 0.5 s goal is judged on the full 32-slice 512 x 512 scan only
        assert one("model_seconds", v)["ichdet"] > 0
        diff = one("max_abs_diff", v)
        assert diff["peer_value"] == 0.0 and diff["ratio"] is None
        assert diff["ichdet"] == pytest.approx(max(e2e["max_abs_prob_diff"], e2e["max_abs_slice_prob_diff"]))
        assert e2e["precision"] == e2e["dtype"] == ("bf16" if v == "bf16" else "fp32")
        if e2e["dtype"] == "fp32":  # eager fp32 layouts and onnxruntime: same numbers to float rounding
            assert e2e["tolerance"] == 1e-4 and diff["ichdet"] <= 1e-4 and diff["goal_met"] is True
            assert e2e["agrees"] is True
        else:  # bf16: reported against the same 1e-4 bar
            assert e2e["tolerance"] == 1e-4 and e2e["agrees"] == (diff["ichdet"] <= 1e-4)
    assert one("max_abs_diff", "eager-fp32")["ichdet"] == 0.0

    flop_rows = [r for r in rows if r["metric"] == "model_gflops"]
    assert {(r["variant"], r["peak_dtype"]) for r in flop_rows} == {
        ("eager-fp32", "fp32"), ("eager-fp32-cl", "fp32"), ("onnx", "fp32")} | (
        {("bf16", "bf16"), ("bf16", "fp32")} if native else set())
    for r in flop_rows:  # against the peak of the row's precision (bf16 also against fp32); no bound on the
        # fraction itself: it depends on the hardware
        assert r["peak_dtype"] in ({"bf16", "fp32"} if r["precision"] == "bf16" else {"fp32"})
        assert r["peer_value"] > 0 and r["peer_value"] == pytest.approx(d["peaks"][f"{r['peak_dtype']}_gflops"])
        assert r["peer"].startswith(f"torch.mm {r['peak_dtype']} peak")
        assert r["fraction_of_peak"] == r["ratio"] > 0 and math.isfinite(r["ratio"])
        assert r["ichdet"] == pytest.approx(r["flops_per_scan"] / 1e9 / one("model_seconds", r["variant"])["ichdet"])
    assert one("onnx_export_seconds", "onnx")["ichdet"] > 0
    assert d["fastest_agreeing_variant"] in ran
    assert d["summary"]["by_input"]["synthetic"]["default"]["variant"] == "onnx"
    assert d["summary"]["by_input"]["synthetic"]["fallback"]["variant"] == "eager-fp32-cl"
    assert set(d["summary"]["by_input"]["synthetic"]["all"]) == set(ran)


def test_bench_infer_precision_fp32_skips_bf16(tmp_path):
    """--precision fp32 skips the bf16 variants on every CPU (so the skip path runs everywhere);
    the summary copes without them."""
    d = _run(tmp_path, ["eager-fp32", "eager-fp32-cl", "bf16"], "--precision", "fp32")
    assert d["settings"]["variants"] == ["eager-fp32", "eager-fp32-cl"]
    assert d["settings"]["precision"]["requested"] == "fp32"
    _check_bf16_skipped(d, "not asked")
    s = d["summary"]["by_input"]["synthetic"]
    assert s["default"] is None and s["fallback"]["variant"] == "eager-fp32-cl"  # no onnx asked here
    assert d["fastest_agreeing_variant"] in ("eager-fp32", "eager-fp32-cl")


def test_bench_infer_rejects_unknown_variant(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json"), "--quick",
                           "--variants", "eager-fp32,fp64"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown variant" in lines[0] and "fp64" in lines[0], proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_bench_infer_segmentation_quick(tmp_path):
    """--task segmentation: the seg_unet bundle end to end, channels-last against contiguous, same masks."""
    out = tmp_path / "bench_segment.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--task", "segmentation", "--out", str(out), "--quick"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "seconds_per_32_slices" in proc.stdout
    d = json.loads(out.read_text())
    assert d["benchmark"] == "bench_segment" and d["settings"]["model"]["model"] == "seg_unet"
    rows = {(r["variant"], r["metric"]): r for r in d["results"]}
    for key in ("read_seconds", "prepare_seconds", "restore_seconds"):
        assert rows[(None, key)]["ichdet"] >= 0
    for v in ("seg-cl", "seg-cl-unfused", "seg-contiguous"):
        e2e = rows[(v, "end_to_end_seconds")]
        assert e2e["ichdet"] > 0 and e2e["peer"].startswith("seg-contiguous")
        assert rows[(v, "seconds_per_32_slices")]["ichdet"] == pytest.approx(e2e["ichdet"] * 32 / 8)
        assert rows[(v, "mask_agreement")]["goal_met"] is True
        assert rows[(v, "model_seconds")]["batch_norm_folded"] == (v != "seg-cl-unfused")
    assert rows[("seg-contiguous", "end_to_end_seconds")]["ratio"] == 1.0
    assert rows[("seg-cl", "seconds_per_32_slices")]["goal_met"] is None  # 64 x 64: not the goal's scan
    assert d["skipped"] == [{"case": "cq500", "reason": "--quick runs the synthetic case only; name cq500 in --cases"}]


def test_bench_segment_rejects_unknown_case(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--task", "segmentation", "--out", str(tmp_path / "x.json"),
                           "--quick", "--cases", "mri"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "bench_segment.py: error: unknown case(s) mri; choose from synthetic, cq500"
