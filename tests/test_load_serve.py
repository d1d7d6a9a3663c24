"""benchmarks/load_serve.py: a quick run (tiny model, 64 x 64 scan, 30 requests, 4 at a time)
against a real `ichdet serve` subprocess writes the documented JSON with no errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "load_serve.py"
TYPES = ["health", "study_json", "slice_png", "overlay_png", "predict_upload"]
ROW_KEYS = {"case", "metric", "unit", "ichdet", "peer", "peer_value", "ratio", "goal", "goal_met", "count"}


def test_load_serve_quick(tmp_path):
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--quick", "--requests", "30",
                           "--concurrency", "4"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "p50 ms" in proc.stdout and "throughput" in proc.stdout  # the table
    d = json.loads(out.read_text())
    assert set(d) >= {"machine", "settings", "results", "summary"}
    s = d["settings"]
    assert (s["requests"], s["concurrency"], s["queue"], s["quick"]) == (30, 4, 4, True)
    assert s["server_exit_code"] == 0 and s["server_tracebacks"] == 0 and s["server_temp_files_left"] == []
    summary = d["summary"]
    assert sum(summary[t]["count"] for t in TYPES) == summary["all"]["count"] == 30
    assert all(summary[t]["count"] > 0 for t in TYPES)
    for t in TYPES + ["all"]:
        v = summary[t]
        assert v["non_2xx"] == 0 and v["exceptions"] == 0, (t, v)
        assert sum(v["statuses"].values()) == v["count"]
        assert 0 < v["p50"] <= v["p90"] <= v["p99"] <= v["max"], (t, v)

    rows = d["results"]
    for r in rows:
        assert set(r) >= ROW_KEYS, sorted(ROW_KEYS - set(r))
        if r["ratio"] is not None:
            assert r["ratio"] == pytest.approx(r["ichdet"] / r["peer_value"])
        if r["metric"].startswith("errors_"):
            assert r["ichdet"] == 0 and r["goal_met"] is True

    def one(case, metric):
        found = [r for r in rows if r["case"] == case and r["metric"] == metric]
        assert len(found) == 1, (case, metric)
        return found[0]

    for t in TYPES + ["all"]:
        lat = [one(t, f"latency_{p}_ms")["ichdet"] for p in ("p50", "p90", "p99", "max")]
        assert lat == sorted(lat) and lat[0] > 0
        assert one(t, "latency_p50_ms")["peer"] == "GET /api/health"
        assert one(t, "latency_p99_ms")["peer_value"] == one("health", "latency_p99_ms")["ichdet"]
    assert one("health", "latency_p50_ms")["ratio"] == pytest.approx(1.0)
    thr = one("all", "throughput_rps")
    assert thr["ichdet"] == pytest.approx(30 / thr["wall_seconds"])
    assert one("open_study", "latency_ms")["ichdet"] > 0
