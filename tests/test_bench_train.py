"""benchmarks/bench_train.py: a quick run (tiny slices, one step each) writes the documented JSON."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_train.py"

pytest.importorskip("torch")
pytest.importorskip("monai")

VARIANTS = {"fp32", "fp32-cl", "bf16", "bf16-cl"}


def test_bench_train_quick(tmp_path):
    out = tmp_path / "bench_train.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--quick"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train_slices_per_s" in proc.stdout and "data_stall_fraction" in proc.stdout  # the table
    d = json.loads(out.read_text())
    assert set(d) >= {"machine", "settings", "peaks", "summary", "results"}
    for key in ("cpu_model", "logical_cores", "python", "torch", "numpy", "torch_threads"):
        assert key in d["machine"]
    s = d["settings"]
    assert s["quick"] is True and s["batch"] == 4 and s["size"] == 64
    assert d["peaks"]["fp32_gflops"] > 0 and d["peaks"]["bf16_gflops"] > 0
    rows = d["results"]
    for r in rows:
        assert set(r) >= {"case", "metric", "unit", "ichdet", "peer", "peer_value", "ratio", "goal", "goal_met"}
        assert isinstance(r["ichdet"], float) and r["ichdet"] >= 0
        if r["ratio"] is not None:
            assert r["ratio"] == pytest.approx(r["ichdet"] / r["peer_value"])

    speed = [r for r in rows if r["metric"] == "train_slices_per_s"]
    assert {r["variant"] for r in speed if r["base_width"] == 16} == VARIANTS
    assert {r["base_width"] for r in speed if r["variant"] == "fp32"} == {8, 16, 32}
    for r in speed:
        assert r["ichdet"] > 0 and r["loss_finite"] is True and r["flops_per_step"] > 0

    gflops = [r for r in rows if r["metric"] == "train_gflops"]
    assert {(r["variant"], r["peak_dtype"]) for r in gflops if r["base_width"] == 16} == {
        ("fp32", "fp32"), ("fp32-cl", "fp32"), ("bf16", "bf16"), ("bf16", "fp32"), ("bf16-cl", "bf16"),
        ("bf16-cl", "fp32")}
    for r in gflops:
        assert r["fraction_of_peak"] > 0 and r["ratio"] == r["fraction_of_peak"]
        if r["dtype"] == "fp32" or r["peak_dtype"] == "bf16":  # against the matching peak; bf16 vs the fp32
            assert r["fraction_of_peak"] <= 1.5                 # peak may legitimately exceed 1
        assert r["peer_value"] == pytest.approx(d["peaks"][f"{r['peak_dtype']}_gflops"])

    stall = [r for r in rows if r["metric"] == "data_stall_fraction"]
    assert sorted(r["loader_workers"] for r in stall) == [0, 1]
    for r in stall:
        assert 0.0 <= r["ichdet"] <= 1.0 and r["peer_value"] == 0.0 and r["ratio"] is None
        assert r["augmentation"]
    assert len([r for r in rows if r["metric"] == "loader_step_seconds"]) == 2
    assert d["summary"]["fastest_variant_at_base_width"] in VARIANTS


def test_bench_train_rejects_unknown_variant(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json"), "--variants", "fp64"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown variant" in proc.stderr
    assert not (tmp_path / "x.json").exists()
