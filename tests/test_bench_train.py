"""benchmarks/bench_train.py: a quick run (tiny slices, one step each) writes the documented JSON, on
any x86-64 CPU: where bf16 is not native (e.g. with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2)
the bf16 variants are skipped with a reason and no bf16 peak is measured."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_train.py"

pytest.importorskip("torch")
pytest.importorskip("monai")

from ichdet.engine.precision import cpu_features  # noqa: E402

FP32_VARIANTS = {"fp32", "fp32-cl"}
BF16_VARIANTS = {"bf16", "bf16-cl"}
VARIANTS = FP32_VARIANTS | BF16_VARIANTS


def _run(tmp_path, *args, timeout=120) -> dict:
    out = tmp_path / "bench_train.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--quick", *args],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train_slices_per_s" in proc.stdout and "data_stall_fraction" in proc.stdout  # the table
    return json.loads(out.read_text())


def _check_common(d: dict) -> list[dict]:
    """Schema and hardware-independent facts; figures only positive and finite."""
    assert set(d) >= {"machine", "settings", "peaks", "summary", "skipped", "results"}
    for key in ("cpu_model", "logical_cores", "python", "torch", "numpy", "torch_threads", "cpu_features"):
        assert key in d["machine"]
    feats = d["machine"]["cpu_features"]
    assert feats == cpu_features().to_dict()  # the same CPU, ISA and overrides as this process sees
    assert feats["describe"] and isinstance(feats["native_bf16"], bool)
    s = d["settings"]
    assert s["quick"] is True and s["batch"] == 4 and s["size"] == 64
    assert d["peaks"]["fp32_gflops"] > 0 and math.isfinite(d["peaks"]["fp32_gflops"])
    rows = d["results"]
    for r in rows:
        assert set(r) >= {"case", "metric", "unit", "ichdet", "peer", "peer_value", "ratio", "goal", "goal_met",
                          "precision"}
        assert r["precision"] in ("fp32", "bf16")
        assert isinstance(r["ichdet"], float) and r["ichdet"] >= 0 and math.isfinite(r["ichdet"])
        if r["ratio"] is not None:
            assert r["ratio"] == pytest.approx(r["ichdet"] / r["peer_value"])

    speed = [r for r in rows if r["metric"] == "train_slices_per_s"]
    assert {r["base_width"] for r in speed if r["variant"] == "fp32"} == {8, 16, 32}
    for r in speed:
        assert r["ichdet"] > 0 and r["loss_finite"] is True and r["flops_per_step"] > 0
        assert r["precision"] == ("bf16" if r["variant"] in BF16_VARIANTS else "fp32")

    for r in (r for r in rows if r["metric"] == "train_gflops"):
        # against the peak of the row's own precision (a bf16 row also against fp32); no bound on the
        # fraction itself: it depends on the hardware (an emulated bf16 peak is tiny)
        assert r["fraction_of_peak"] > 0 and math.isfinite(r["fraction_of_peak"]) and r["ratio"] == r["fraction_of_peak"]
        assert r["peak_dtype"] in ({"bf16", "fp32"} if r["precision"] == "bf16" else {"fp32"})
        assert r["peer_value"] == pytest.approx(d["peaks"][f"{r['peak_dtype']}_gflops"])

    stall = [r for r in rows if r["metric"] == "data_stall_fraction"]
    assert sorted(r["loader_workers"] for r in stall) == [0, 1]
    for r in stall:
        assert 0.0 <= r["ichdet"] <= 1.0 and r["peer_value"] == 0.0 and r["ratio"] is None
        assert r["augmentation"]
    assert len([r for r in rows if r["metric"] == "loader_step_seconds"]) == 2
    assert d["summary"]["fastest_variant_at_base_width"] in {r["variant"] for r in speed}
    return rows


def _check_bf16_skipped(d: dict, rows: list[dict], why: str) -> None:
    describe = d["machine"]["cpu_features"]["describe"]
    skipped = {s["case"]: s["reason"] for s in d["skipped"]}
    assert set(skipped) == {f"variant {v}" for v in BF16_VARIANTS}
    for reason in skipped.values():
        assert why in reason and describe in reason and "\n" not in reason
    assert d["peaks"]["bf16_gflops"] is None and d["peaks"]["matmul_sizes"]["bf16"] is None
    assert all("bf16" not in p for p in (d["peaks"]["before"], d["peaks"]["middle"], d["peaks"]["after"]))
    assert {r["variant"] for r in rows if r["metric"] == "train_slices_per_s" and r["base_width"] == 16} == FP32_VARIANTS
    assert {r["precision"] for r in rows} == {"fp32"} and {r["peak_dtype"] for r in rows if "peak_dtype" in r} == {"fp32"}
    assert d["summary"]["fraction_of_bf16_peak"] == {}
    assert d["settings"]["precision"]["bf16_variants_run"] is False


def test_bench_train_quick(tmp_path):
    """Default --precision auto: the bf16 rows where bf16 is native, the bf16 variants skipped elsewhere."""
    d = _run(tmp_path)
    rows = _check_common(d)
    assert d["settings"]["precision"]["requested"] == "auto"
    if cpu_features().native_bf16:
        assert d["skipped"] == [] and d["peaks"]["bf16_gflops"] > 0
        assert {r["variant"] for r in rows if r["metric"] == "train_slices_per_s" and r["base_width"] == 16} == VARIANTS
        gflops = [r for r in rows if r["metric"] == "train_gflops"]
        assert {(r["variant"], r["peak_dtype"]) for r in gflops if r["base_width"] == 16} == {
            ("fp32", "fp32"), ("fp32-cl", "fp32"), ("bf16", "bf16"), ("bf16", "fp32"), ("bf16-cl", "bf16"),
            ("bf16-cl", "fp32")}
        assert {r["precision"] for r in gflops if r["variant"] in BF16_VARIANTS} == {"bf16"}
        assert set(d["summary"]["fraction_of_bf16_peak"]) >= {"w16 bf16", "w16 bf16-cl"}
        assert d["settings"]["precision"]["bf16_variants_run"] is True
    else:
        _check_bf16_skipped(d, rows, "not native")


def test_bench_train_precision_fp32_skips_bf16(tmp_path):
    """--precision fp32 skips the bf16 variants on every CPU (so the skip path runs everywhere)."""
    d = _run(tmp_path, "--precision", "fp32")
    rows = _check_common(d)
    assert d["settings"]["precision"]["requested"] == "fp32"
    _check_bf16_skipped(d, rows, "not asked")


def test_bench_train_rejects_unknown_variant(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json"), "--variants", "fp64"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown variant" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_bench_train_rejects_unknown_precision(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json"), "--precision", "fp16"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--precision" in proc.stderr
    assert not (tmp_path / "x.json").exists()
