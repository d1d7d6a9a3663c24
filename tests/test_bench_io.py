"""benchmarks/bench_io.py: a quick run on a tiny synthetic series writes the documented JSON."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_io.py"

pytest.importorskip("SimpleITK")


def test_bench_io_quick_synthetic(tmp_path):
    out = tmp_path / "bench_io.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--quick", "--repeats", "1",
                           "--size", "64", "--cases", "synthetic"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "read_seconds" in proc.stdout  # the table went to stdout
    d = json.loads(out.read_text())
    assert set(d) >= {"machine", "results"}
    m = d["machine"]
    for key in ("cpu_model", "logical_cores", "python", "numpy", "pydicom", "SimpleITK", "imagecodecs"):
        assert key in m
    assert d["skipped"] == []
    rows = d["results"]
    assert {(r["metric"], r["peer"]) for r in rows} == {(metric, peer) for metric in ("read_seconds", "peak_memory_ratio")
                                                        for peer in ("pydicom-loop", "SimpleITK")}
    for r in rows:
        assert set(r) >= {"case", "metric", "unit", "ichdet", "peer", "peer_value", "ratio", "goal", "goal_met"}
        assert r["case"] == "synthetic" and r["shape"] == [10, 64, 64]
        assert isinstance(r["ichdet"], float) and isinstance(r["peer_value"], float) and r["peer_value"] > 0
        assert r["ratio"] == pytest.approx(r["ichdet"] / r["peer_value"])
        assert r["outputs_equal"] is True and r["max_abs_diff_hu"] <= 1e-3  # the peers read the same HU
        if r["metric"] == "read_seconds":
            assert r["repeats"] == 1 and r["ichdet_min"] <= r["ichdet"] and r["peer_min"] <= r["peer_value"]


def test_bench_io_rejects_unknown_case(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json"), "--cases", "nope"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown case" in proc.stderr
    assert not (tmp_path / "x.json").exists()
