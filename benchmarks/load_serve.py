#!/usr/bin/env python
"""Load test of `ichdet serve`: latency percentiles, throughput and errors under a bounded load.

    python benchmarks/load_serve.py --out benchmarks/results/load_serve.json [--requests 200]
                                    [--concurrency 8] [--bundle PATH] [--quick] [--queue N]

What runs:

1. **The server**: `ichdet serve --model BUNDLE --host 127.0.0.1 --port P --queue Q` in a
   subprocess on a free loopback port (its log goes to a temp file; the tail is printed if it
   fails). BUNDLE is by default bench_infer's random-weight paper-size model (`make_bundle`: the
   2-layer BiLSTM on the width-16 slice CNN, 256 px, the 2x2x2 filter); `--quick` a tiny one of the
   same structure (64 px). Q defaults to the concurrency, so every request is admitted (waits in
   the queue rather than getting 503); `--queue 4` measures the default server instead.
2. **The study**: one synthetic 32-slice DICOM series (`ichdet.synth.make_cohort`; 512 x 512,
   `--quick` 64 x 64), zipped, uploaded once (`POST /api/studies`, timed as its own row). Warm-up,
   untimed: the study JSON, one slice, one overlay (Grad-CAM's first call loads MONAI), health.
3. **The load**: `--requests` requests, `--concurrency` at a time (threads, one keep-alive
   `http.client` connection each), in a fixed shuffled mix per 20 requests: 3 `GET /api/health`,
   3 `GET /api/studies/{id}`, 9 slice PNGs (brain/subdural/bone and a custom 60/120 window over all
   display slices), 4 slice PNGs with `overlay=true` (over all slices: the first of each slice
   computes Grad-CAM through the inference queue, later ones are cached), 1 `POST /api/predict`
   of the same zip. Each response's status and latency (request sent to body read) are recorded.
4. **The server is always stopped** (SIGINT, then kill after 20 s); its temp folder (TMPDIR) is
   then checked to be empty (`settings.server_temp_files_left`).

Rows (`{"case", "metric", "unit", "ichdet", "peer", "peer_value", "ratio", "goal", "goal_met",
"count"}`, ratio = ichdet / peer_value): per request type and `all`: `latency_p50_ms`,
`latency_p90_ms`, `latency_p99_ms`, `latency_max_ms` (peer: the same percentile of
`GET /api/health` in the same run, so the ratio says how much slower than the cheapest request),
`errors_non_2xx` and `errors_exception` (goal 0); for `all`: `throughput_rps` (requests / wall
time of the load phase); `open_study` (the one upload): `latency_ms`. Written atomically.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench_common import base_machine_info, print_aligned, ratio, version, write_json_atomic

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

HOST = "127.0.0.1"
PEER = "GET /api/health"
PERCENTILES = (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
# request types per 20 requests of the mix
MIX = {"health": 3, "study_json": 3, "slice_png": 9, "overlay_png": 4, "predict_upload": 1}
SLICE_WINDOWS = ("brain", "subdural", "bone", "60/120")
STARTUP_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 300


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---- inputs ------------------------------------------------------------------------------------
def make_inputs(tmp: Path, quick: bool, bundle: Path | None, size: int, n_slices: int) -> tuple[Path, dict, bytes]:
    """(bundle folder, its description, the zipped synthetic scan)."""
    from bench_infer import make_bundle, make_synthetic

    if bundle is None:
        bundle, desc = make_bundle(tmp / "bundle", quick)
    else:
        desc = {"bundle": str(bundle)}
    series = make_synthetic(tmp, size, n_slices)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for f in sorted(series.glob("*.dcm")):
            zf.write(f, f"series/{f.name}")
    return bundle, desc, buf.getvalue()


# ---- the server --------------------------------------------------------------------------------
class Server:
    """`ichdet serve` in a subprocess; `stop()` always ends it."""

    def __init__(self, bundle: Path, port: int, queue: int, log_path: Path, tmp: Path):
        env = dict(os.environ)
        env["TMPDIR"] = str(tmp)  # the server's upload folders go here: checked empty after it stops
        env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.cmd = [sys.executable, "-m", "ichdet.cli", "serve", "--model", str(bundle), "--host", HOST,
                    "--port", str(port), "--queue", str(queue)]
        self.log_path, self.port = log_path, port
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> float:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ichdet serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _ = request(http.client.HTTPConnection(HOST, self.port, timeout=5), "GET", "/api/health")
                if status == 200:
                    return time.perf_counter() - t0
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"ichdet serve did not answer /api/health within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, bytes]:
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp.read()


# ---- the load ----------------------------------------------------------------------------------
def plan(n: int, n_display: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """n requests (type, method, path-or-marker) in a fixed shuffled mix."""
    per_block = [t for t, k in MIX.items() for _ in range(k)]
    rng = random.Random(seed)
    out: list[tuple[str, str, str]] = []
    counters = {"slice": 0, "overlay": 0}
    while len(out) < n:
        block = per_block[:]
        rng.shuffle(block)
        for t in block:
            if t == "health":
                out.append((t, "GET", "/api/health"))
            elif t == "study_json":
                out.append((t, "GET", "/api/studies/{id}"))
            elif t == "slice_png":
                i = counters["slice"]
                counters["slice"] += 1
                w = SLICE_WINDOWS[i % len(SLICE_WINDOWS)]
                out.append((t, "GET", f"/api/studies/{{id}}/slices/{(i * 5) % n_display}?window={w}"))
            elif t == "overlay_png":
                i = counters["overlay"]
                counters["overlay"] += 1
                out.append((t, "GET", f"/api/studies/{{id}}/slices/{i % n_display}?window=brain&overlay=true"))
            else:
                out.append((t, "POST", "/api/predict"))
    return out[:n]


def run_load(port: int, jobs: list[tuple[str, str, str]], study_id: str, body: bytes, concurrency: int) -> tuple[list[dict], float]:
    local = threading.local()

    def one(job: tuple[str, str, str]) -> dict:
        kind, method, path = job
        path = path.replace("{id}", study_id)
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
        payload = body if method == "POST" else None
        headers = {"Content-Type": "application/octet-stream", "X-Filename": "load.zip"} if payload else {}
        t0 = time.perf_counter()
        try:
            status, data = request(local.conn, method, path, payload, headers)
            return {"type": kind, "status": status, "seconds": time.perf_counter() - t0, "bytes": len(data)}
        except (OSError, http.client.HTTPException) as e:
            local.conn.close()
            del local.conn
            return {"type": kind, "status": None, "seconds": time.perf_counter() - t0,
                    "error": f"{type(e).__name__}: {e}"}

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="load") as pool:
        records = list(pool.map(one, jobs))
    return records, time.perf_counter() - t0


# ---- the figures -------------------------------------------------------------------------------
def percentiles_ms(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {name: None for name, _ in PERCENTILES}
    a = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {name: float(np.max(a)) if q == 100 else float(np.percentile(a, q)) for name, q in PERCENTILES}


def summarise(records: list[dict], wall_s: float) -> tuple[list[dict], dict]:
    types = list(MIX) + ["all"]
    groups = {t: [r for r in records if t == "all" or r["type"] == t] for t in types}
    stats = {}
    for t, rs in groups.items():
        ok = [r["seconds"] for r in rs]  # every answered or failed request counts in the latency
        stats[t] = {"count": len(rs), **percentiles_ms(ok),
                    "non_2xx": sum(1 for r in rs if r["status"] is not None and not 200 <= r["status"] < 300),
                    "exceptions": sum(1 for r in rs if r["status"] is None),
                    "statuses": {str(s): sum(1 for r in rs if r["status"] == s) for s in sorted({r["status"] for r in rs}, key=str)}}
    peer = stats["health"]
    rows = []
    for t in types:
        s = stats[t]
        for name, _ in PERCENTILES:
            rows.append({"case": t, "metric": f"latency_{name}_ms", "unit": "ms", "ichdet": s[name], "peer": PEER,
                         "peer_value": peer[name], "ratio": ratio(s[name], peer[name]), "goal": None,
                         "goal_met": None, "count": s["count"]})
        for key, metric in (("non_2xx", "errors_non_2xx"), ("exceptions", "errors_exception")):
            rows.append({"case": t, "metric": metric, "unit": "requests", "ichdet": s[key], "peer": None,
                         "peer_value": None, "ratio": None, "goal": "== 0", "goal_met": s[key] == 0,
                         "count": s["count"]})
    rows.append({"case": "all", "metric": "throughput_rps", "unit": "requests/s", "ichdet": len(records) / wall_s,
                 "peer": None, "peer_value": None, "ratio": None, "goal": None, "goal_met": None,
                 "count": len(records), "wall_seconds": wall_s})
    return rows, stats


def print_table(stats: dict, wall_s: float, n: int, open_ms: float) -> None:
    table = [("request", "count", "p50 ms", "p90 ms", "p99 ms", "max ms", "p50 / health p50", "non-2xx", "exceptions")]
    for t, s in stats.items():
        table.append((t, s["count"], f"{s['p50']:.1f}", f"{s['p90']:.1f}", f"{s['p99']:.1f}", f"{s['max']:.1f}",
                      f"{s['p50'] / stats['health']['p50']:.1f}x", s["non_2xx"], s["exceptions"]))
    print_aligned(table)
    print(f"throughput {n / wall_s:.1f} requests/s ({n} requests in {wall_s:.2f} s); open_study (upload + predict + "
          f"display stacks) {open_ms:.0f} ms")


# ---- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--requests", type=int, default=200, help="requests in the load phase (default 200)")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    ap.add_argument("--bundle", type=Path, help="a bundle folder (default: a random-weight paper-size model)")
    ap.add_argument("--quick", action="store_true", help="a tiny model and a 64 x 64 scan (smoke run)")
    ap.add_argument("--queue", type=int, help="the server's --queue (default: the concurrency)")
    ap.add_argument("--size", type=int, help="in-plane pixels of the synthetic scan (512; --quick 64)")
    ap.add_argument("--slices", type=int, default=32, help="slices of the synthetic scan (default 32)")
    a = ap.parse_args(argv)
    if a.requests < 1 or a.concurrency < 1 or (a.queue is not None and a.queue < 1):
        ap.error("--requests, --concurrency and --queue must be >= 1")
    queue = a.queue or a.concurrency
    size = a.size or (64 if a.quick else 512)

    with tempfile.TemporaryDirectory(prefix="ichdet-load-") as tmp_name:
        tmp = Path(tmp_name)
        log("building the bundle and the synthetic scan ...")
        bundle, bundle_desc, body = make_inputs(tmp, a.quick, a.bundle, size, a.slices)
        port = free_port()
        server_tmp = tmp / "server-tmp"
        server_tmp.mkdir()
        server = Server(bundle, port, queue, tmp / "server.log", server_tmp)
        try:
            log(f"starting {' '.join(server.cmd[1:])} ...")
            startup_s = server.wait_ready()
            conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
            t0 = time.perf_counter()
            status, data = request(conn, "POST", "/api/studies", body,
                                   {"Content-Type": "application/octet-stream", "X-Filename": "load.zip"})
            open_ms = (time.perf_counter() - t0) * 1000.0
            if status != 201:
                raise RuntimeError(f"uploading the study gave {status}: {data[:300]!r}")
            study = json.loads(data)
            sid, n_display = study["id"], study["n_slices"]
            for path in (f"/api/studies/{sid}", f"/api/studies/{sid}/slices/0",
                         f"/api/studies/{sid}/slices/0?overlay=true", "/api/health"):  # warm-up, untimed
                request(conn, "GET", path)
            conn.close()
            jobs = plan(a.requests, n_display)
            log(f"sending {len(jobs)} requests, {a.concurrency} at a time ...")
            load_avg = os.getloadavg()
            records, wall_s = run_load(port, jobs, sid, body, a.concurrency)
        finally:
            code = server.stop()
            tail = server.log_tail(400)
        tracebacks = tail.count("Traceback")
        temp_left = sorted(p.name for p in server_tmp.iterdir())
        if code not in (0, -signal.SIGINT, 130):
            log(f"warning: ichdet serve exited with {code}")

    rows, stats = summarise(records, wall_s)
    rows.append({"case": "open_study", "metric": "latency_ms", "unit": "ms", "ichdet": open_ms, "peer": None,
                 "peer_value": None, "ratio": None, "goal": None, "goal_met": None, "count": 1})
    machine = base_machine_info()
    machine.update({"numpy": np.__version__, "torch": version("torch"), "fastapi": version("fastapi"),
                    "uvicorn": version("uvicorn"), "load_average_start": [round(v, 2) for v in load_avg]})
    settings = {"requests": a.requests, "concurrency": a.concurrency, "queue": queue, "quick": a.quick,
                "mix_per_20": MIX, "slice_windows": list(SLICE_WINDOWS), "model": bundle_desc,
                "scan": {"slices": a.slices, "size": size, "zip_bytes": len(body), "display_slices": n_display,
                         "size_px": study["size"]},
                "server_command": " ".join(server.cmd[1:]).replace(str(bundle), "BUNDLE"),
                "server_startup_s": startup_s, "server_exit_code": code, "server_tracebacks": tracebacks,
                "server_temp_files_left": temp_left,
                "warmup": ["study JSON", "slice 0", "slice 0 overlay", "health"], "peer": PEER,
                "latency": "request sent to response body read, per request, milliseconds; percentiles by "
                           "numpy linear interpolation; failed requests count with their time to failure"}
    errors = [r.get("error") for r in records if r["status"] is None][:5]
    write_json_atomic(a.out, {"machine": machine, "settings": settings, "skipped": [], "results": rows,
                              "summary": {t: {k: v for k, v in s.items()} for t, s in stats.items()},
                              "example_exceptions": errors})
    print_table(stats, wall_s, len(records), open_ms)
    log(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
