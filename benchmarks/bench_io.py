#!/usr/bin/env python
"""Benchmark: reading a DICOM CT series into a float32 HU volume, ichdet against its peers.

    python benchmarks/bench_io.py --out benchmarks/results/bench_io.json [--repeats 5] [--quick]
                                  [--cases cq500,synthetic] [--size 512] [--slices 40]

Readers, each turning a folder into a float32 (Z, H, W) array of Hounsfield units:

* ``ichdet``       -- ``ichdet.io.read_dicom_series(folder).hu``
* ``pydicom-loop`` -- the notebook way: ``dcmread`` every file, keep the series with the most files,
                      sort by ImagePositionPatient along the slice normal, stack
                      ``pixel_array * slope + intercept`` as float32.
* ``SimpleITK``    -- ``ImageSeriesReader``: GetGDCMSeriesIDs, largest series,
                      GetGDCMSeriesFileNames, Execute, GetArrayFromImage as float32.

Cases: ``cq500`` (the real CQ500 series at ../shared/data/cq500-ct-1 relative to the repo: 238
JPEG Lossless slices plus one stray file of another series; skipped with a note when absent) and
``synthetic`` (an uncompressed 40 x 512 x 512 series written with ``ichdet.io.write_dicom_series``).

Every reader runs in its own fresh subprocess: after the imports the peak-RSS mark is reset
(``/proc/self/clear_refs``) and the current RSS taken as baseline; the first read is measured for
peak memory (VmHWM - baseline) and doubles as the warm-up; then ``--repeats`` timed reads follow.
The peers' arrays are compared with ichdet's (ichdet floors HU at -1024, so the peer is compared as
``np.maximum(peer, -1024)``); a mismatch is recorded in the JSON, not raised.

Output (written atomically): ``{"machine": {...}, "settings": {...}, "skipped": [...],
"results": [{"case", "metric", "unit", "ichdet", "peer", "peer_value", "ratio", ...}]}`` with
ratio = ichdet / peer_value.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from bench_common import base_machine_info, fmt, ratio, version, write_json_atomic

REPO = Path(__file__).resolve().parents[1]
CQ500_DIR = Path(os.environ.get("ICHDET_SHARED", REPO.parent / "shared")) / "data" / "cq500-ct-1"
READERS = ("ichdet", "pydicom-loop", "SimpleITK")
PEERS = READERS[1:]
CASES = ("cq500", "synthetic")
AIR_HU = -1024.0
MATCH_TOL_HU = 1e-3
MEMORY_GOAL = 2.0
SPEED_GOAL = "ratio <= 1 (ichdet at least as fast as this peer; both rows <= 1 means at least as fast as the fastest)"


# ----------------------------------------------------------------------------------------------
# the three readers
# ----------------------------------------------------------------------------------------------
def read_ichdet(folder: Path) -> np.ndarray:
    from ichdet.io import read_dicom_series
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stray series in CQ500 is reported as a warning
        return read_dicom_series(folder).hu


def read_pydicom_loop(folder: Path) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError
    series: dict[str, list] = {}
    for f in sorted(Path(folder).iterdir()):
        if not f.is_file():
            continue
        try:
            ds = pydicom.dcmread(f)
        except InvalidDicomError:
            continue
        if "PixelData" not in ds:
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    slices = max(series.values(), key=len)
    iop = np.asarray([float(v) for v in slices[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    slices.sort(key=lambda ds: float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)))
    return np.stack([(ds.pixel_array * float(ds.get("RescaleSlope", 1) or 1)
                      + float(ds.get("RescaleIntercept", 0) or 0)).astype(np.float32) for ds in slices])


def read_simpleitk(folder: Path) -> np.ndarray:
    import SimpleITK as sitk
    folder = str(folder)
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    names = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid) for uid in ids), key=len)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    image = reader.Execute()
    return sitk.GetArrayFromImage(image).astype(np.float32, copy=False)


READ_FUNCS = {"ichdet": read_ichdet, "pydicom-loop": read_pydicom_loop, "SimpleITK": read_simpleitk}


# ----------------------------------------------------------------------------------------------
# worker: one reader, one folder, one fresh process
# ----------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def worker(reader: str, folder: Path, repeats: int, save: Path | None) -> dict:
    import resource
    # import everything any reader may need (decoders included) before the baseline
    import imagecodecs  # noqa: F401
    import pydicom  # noqa: F401
    import pydicom.pixels  # noqa: F401
    import SimpleITK  # noqa: F401
    import ichdet.io  # noqa: F401
    func = READ_FUNCS[reader]
    gc.collect()
    if _reset_peak() and _status_kb("VmHWM") is not None:
        method = "VmHWM after clear_refs"
        base_kb = _status_kb("VmRSS") or 0
        t0 = time.perf_counter()
        arr = func(folder)
        first = time.perf_counter() - t0
        peak_kb = _status_kb("VmHWM") or 0
    else:  # fallback: ru_maxrss high-water delta (may undercount if the imports peaked higher)
        method = "ru_maxrss delta"
        base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        arr = func(folder)
        first = time.perf_counter() - t0
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    extra = max(0, peak_kb - base_kb) * 1024
    times = []
    for _ in range(repeats):
        del arr
        gc.collect()
        t0 = time.perf_counter()
        arr = func(folder)
        times.append(time.perf_counter() - t0)
    if save is not None:
        np.save(save, arr)
    return {"reader": reader, "shape": list(arr.shape), "dtype": str(arr.dtype), "volume_bytes": int(arr.size * 4),
            "peak_extra_bytes": int(extra), "baseline_rss_bytes": int(base_kb * 1024), "memory_method": method,
            "first_read_seconds": first, "times": times}


def run_worker(reader: str, folder: Path, repeats: int, save: Path, timeout: float = 1800) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", reader, "--_folder", str(folder),
           "--repeats", str(repeats), "--_save", str(save)]
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"reader": reader, "error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------
def synthetic_volume(z: int, size: int, seed: int = 0):
    """A head-like volume (air, skull ring, brain with a per-slice marker, a small bleed) plus noise."""
    from ichdet.io import Volume
    from ichdet.io.volume import affine_from_geometry
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
    hu = np.full((z, size, size), -1000.0, dtype=np.float32)
    for k in range(z):
        sl = hu[k]
        sl[r < 0.9] = 1000.0
        sl[r < 0.75] = 30.0 + 10.0 * k
    c, h = size // 2, max(2, size // 16)
    hu[z // 2, c - h:c + h, c - h:c + h] = 70.0
    hu += rng.normal(0.0, 25.0, hu.shape).astype(np.float32)  # some air falls below -1024 on purpose
    spacing = (5.0, 0.45, 0.45)
    affine = affine_from_geometry(np.array([-115.0, -115.0, -40.0]), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]),
                                  np.array([0, 0, spacing[0]]), spacing[1], spacing[2])
    return Volume(hu=hu, spacing=spacing, affine=affine, patient_id="BENCH")


def cq500_present() -> bool:
    return CQ500_DIR.is_dir() and any(CQ500_DIR.glob("*.dcm"))


# ----------------------------------------------------------------------------------------------
# machine info
# ----------------------------------------------------------------------------------------------
def machine_info() -> dict:
    info = base_machine_info()
    try:
        from ichdet.io.dicom import DECODE_THREADS
        info["ichdet_decode_threads"] = DECODE_THREADS
    except ImportError:
        pass
    for name, dist in (("numpy", "numpy"), ("pydicom", "pydicom"), ("SimpleITK", "SimpleITK"),
                       ("imagecodecs", "imagecodecs"), ("pylibjpeg", "pylibjpeg"),
                       ("pylibjpeg_libjpeg", "pylibjpeg-libjpeg"), ("psutil", "psutil"), ("ichdet", "ichdet")):
        info[name] = version(dist)
    return info


# ----------------------------------------------------------------------------------------------
# one case
# ----------------------------------------------------------------------------------------------
def compare(ref: np.ndarray, peer: np.ndarray) -> dict:
    if ref.shape != peer.shape:
        return {"outputs_equal": False, "max_abs_diff_hu": None,
                "check_note": f"shape {list(peer.shape)} differs from ichdet's {list(ref.shape)}"}
    diff = np.abs(ref - np.maximum(peer.astype(np.float32, copy=False), AIR_HU))
    mx = float(diff.max()) if diff.size else 0.0
    out = {"outputs_equal": bool(mx <= MATCH_TOL_HU), "max_abs_diff_hu": mx}
    if mx > MATCH_TOL_HU:
        flipped = float(np.abs(ref - np.maximum(peer[::-1], AIR_HU)).max())
        out["check_note"] = (f"{int((diff > MATCH_TOL_HU).sum())} voxel(s) differ by up to {mx:g} HU"
                             + (" (the peer's slice order is reversed)" if flipped <= MATCH_TOL_HU else ""))
    return out


def run_case(case: str, label: str, folder: Path, repeats: int, tmp: Path, log) -> tuple[list[dict], str | None]:
    res = {}
    for reader in READERS:
        log(f"  {case}: {reader} ...")
        res[reader] = run_worker(reader, folder, repeats, tmp / f"{case}-{reader}.npy")
    me = res["ichdet"]
    if "error" in me:
        return [], f"ichdet failed: {me['error']}"
    ref = np.load(tmp / f"{case}-ichdet.npy")
    vol_bytes = me["volume_bytes"]
    base = {"case": case, "case_description": label, "shape": me["shape"], "volume_mb": round(vol_bytes / 1e6, 2)}
    rows = []
    for peer in PEERS:
        p = res[peer]
        check = {}
        if "error" not in p:
            arr = np.load(tmp / f"{case}-{peer}.npy")
            check = compare(ref, arr)
            del arr
        else:
            check = {"outputs_equal": None, "check_note": f"peer failed: {p['error']}"}
        t_me, t_p = statistics.median(me["times"]), (statistics.median(p["times"]) if "times" in p else None)
        r = ratio(t_me, t_p)
        rows.append({**base, "metric": "read_seconds", "unit": "s (median)", "ichdet": t_me, "peer": peer,
                     "peer_value": t_p, "ratio": r, "ichdet_min": min(me["times"]),
                     "peer_min": min(p["times"]) if "times" in p else None, "repeats": len(me["times"]),
                     "goal": SPEED_GOAL, "goal_met": None if r is None else bool(r <= 1.0), **check})
        m_me = me["peak_extra_bytes"] / vol_bytes
        m_p = p["peak_extra_bytes"] / vol_bytes if "peak_extra_bytes" in p else None
        rows.append({**base, "metric": "peak_memory_ratio", "unit": "peak extra RSS / float32 volume bytes",
                     "ichdet": m_me, "peer": peer, "peer_value": m_p, "ratio": ratio(m_me, m_p),
                     "ichdet_peak_extra_mb": round(me["peak_extra_bytes"] / 1e6, 1),
                     "peer_peak_extra_mb": round(p["peak_extra_bytes"] / 1e6, 1) if m_p is not None else None,
                     "memory_method": me["memory_method"],
                     "goal": f"ichdet <= {MEMORY_GOAL} (peak extra memory at most {MEMORY_GOAL:g}x the float32 volume)",
                     "goal_met": bool(m_me <= MEMORY_GOAL), **check})
    for reader in READERS:
        (tmp / f"{case}-{reader}.npy").unlink(missing_ok=True)
    return rows, None


# ----------------------------------------------------------------------------------------------
def print_table(rows: list[dict], skipped: list[dict]) -> None:
    head = ("case", "metric", "ichdet", "peer", "peer_value", "ratio", "goal", "equal")
    table = [head]
    for r in rows:
        table.append((r["case"], r["metric"], fmt(r["ichdet"]), r["peer"], fmt(r["peer_value"]), fmt(r["ratio"], 2),
                      {True: "met", False: "MISSED", None: "-"}[r["goal_met"]],
                      {True: "yes", False: "NO", None: "-"}[r.get("outputs_equal")]))
    widths = [max(len(str(t[i])) for t in table) for i in range(len(head))]
    for k, t in enumerate(table):
        print("  ".join(str(c).ljust(w) for c, w in zip(t, widths)))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    for s in skipped:
        print(f"skipped {s['case']}: {s['reason']}")
    for r in rows:
        if r.get("check_note") and r["metric"] == "read_seconds":
            print(f"note {r['case']} / {r['peer']}: {r['check_note']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="JSON file to write")
    ap.add_argument("--repeats", type=int, default=5, help="timed reads per reader after the warm-up (>= 5 unless --quick)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 synthetic slices, repeats may be < 5")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma list out of {','.join(CASES)}")
    ap.add_argument("--size", type=int, default=512, help="synthetic slice size (pixels)")
    ap.add_argument("--slices", type=int, default=None, help="synthetic slice count (40; 10 with --quick)")
    ap.add_argument("--_worker", choices=READERS, help=argparse.SUPPRESS)
    ap.add_argument("--_folder", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_save", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a._worker:
        print(json.dumps(worker(a._worker, a._folder, a.repeats, a._save)))
        return 0
    if a.out is None:
        ap.error("--out is required")
    if a.repeats < 1 or (a.repeats < 5 and not a.quick):
        ap.error("--repeats must be >= 5 (or >= 1 with --quick)")
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        ap.error(f"unknown case(s) {bad}; choose from {list(CASES)}")
    if a.size < 8:
        ap.error("--size must be >= 8")
    slices = a.slices or (10 if a.quick else 40)

    sys.path.insert(0, str(REPO / "src"))
    os.environ["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    rows: list[dict] = []
    skipped: list[dict] = []
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_io_") as td:
        tmp = Path(td)
        for case in cases:
            if case == "cq500":
                if not cq500_present():
                    skipped.append({"case": case, "reason": f"CQ500 series not present at {CQ500_DIR}"})
                    continue
                folder = CQ500_DIR
                label = f"real CQ500 series {CQ500_DIR.name} (JPEG Lossless, plus one stray file of another series)"
            else:
                from ichdet.io import write_dicom_series
                folder = tmp / "synthetic"
                write_dicom_series(synthetic_volume(slices, a.size), folder)
                label = f"synthetic uncompressed series, {slices} x {a.size} x {a.size}, explicit VR LE, written by ichdet"
            case_rows, err = run_case(case, label, folder, a.repeats, tmp, log)
            if err:
                skipped.append({"case": case, "reason": err})
            rows.extend(case_rows)

    out = {"benchmark": "bench_io", "machine": machine_info(),
           "settings": {"repeats": a.repeats, "warmup": 1, "quick": a.quick, "cases": cases,
                        "synthetic_size": a.size, "synthetic_slices": slices, "match_tolerance_hu": MATCH_TOL_HU,
                        "timing": "median (and min) wall seconds of the timed reads, each reader in its own fresh process; "
                                  "the first read is the warm-up and the memory measurement",
                        "memory": "peak RSS during the first read minus RSS after imports, divided by the float32 volume size"},
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - t_start, 1),
           "skipped": skipped, "results": rows}
    write_json_atomic(a.out, out)
    print_table(rows, skipped)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
