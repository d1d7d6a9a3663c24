#!/usr/bin/env python
"""Benchmark: end-to-end inference seconds per scan and the model's fraction of the matmul peak.

    python benchmarks/bench_infer.py --out benchmarks/results/bench_infer.json [--quick]
                                     [--cases synthetic,cq500] [--variants ...] [--repeats 5]
                                     [--threads N] [--bundle PATH] [--precision auto|fp32|bf16]
    python benchmarks/bench_infer.py --task segmentation --out benchmarks/results/bench_segment.json [--quick]

``--task segmentation`` times the haemorrhage segmentation instead (``bench_segment.py``, whose
options it takes: the seg_unet bundle end to end on the same inputs, goal under 1 s per 32-slice scan).
What follows is the detection task (the default).

What runs, all in this one process with torch (and onnxruntime) on every usable core:

0. **Precision** (``--precision``, ``bench_common.plan_precision``): ``auto`` runs the bf16
   variants only where bf16 is native (``ichdet.engine.precision.cpu_features().native_bf16``:
   AVX512-BF16 / AMX in use) and lists each of them in ``skipped`` with the reason elsewhere;
   ``fp32`` skips them everywhere; ``bf16`` builds them even where bf16 is emulated (their
   ``TorchRuntime(precision="bf16")`` then decides what runs, and the rows say what it ran).
1. **Matmul peak**: ``torch.mm`` of square fp32 matrices (n = 2048, 4096; the same function as
   bench_train, ``bench_common.matmul_peak``), and of bf16 ones only when a variant's runtime
   runs bf16 (capped at n = 512 where bf16 is emulated), after the variants are built, between
   the inputs and after; the highest is the peak.
2. **The model**: by default the paper's proposed 3D model at full size with seeded random
   weights, ``create_model("scan_lstm", encoder_kw={in_channels 1, base_width 16, feature_dim 512,
   dropout 0.5}, lstm_layers=2, hidden=512)``, written with ``save_bundle`` (kind "scan", brain
   window, 256 px, 2x2 in-plane and 2x2x2 maximum filter, threshold 0.5) into a temp folder and
   read back with ``load_bundle``, so ``predict`` runs through the real bundle path.
   ``--encoder efficientnet_lite0``: the pretrained-encoder model instead (ImageNet EfficientNet-Lite0
   + the same LSTMs, three windows). ``--bundle PATH`` benchmarks a given bundle instead.
3. **Variants**, each a ``Predictor`` whose ``.runtime`` is replaced by the variant's runtime on
   its own fresh copy of the weights: ``eager-fp32`` (TorchRuntime fp32, contiguous NCHW: the
   peer), ``eager-fp32-cl`` (channels_last, in-place ReLU: what ``Predictor`` runs when the bundle
   has no model.onnx), ``bf16`` (``TorchRuntime(precision="bf16")``: bf16 autocast of the slice
   encoder, the LSTM in fp32), ``bf16-cl``, ``compile-fp32-cl`` (``torch.compile``; its first call is timed as
   its own row) and ``onnx`` (``export_onnx`` once, timed as a row, then ``OnnxRuntime``).
4. **Inputs**: ``synthetic`` (``ichdet.synth.make_cohort``: one 32-slice, 5 mm, 512 x 512 DICOM
   series) and ``cq500`` (the real series at ../shared/data/cq500-ct-1: 238 slices of 512 x 512;
   skipped with a reason when absent). Per input: read-only (``load_volume``) and prepare-only
   (``prepare_volume``) times once; per variant two warm-up calls, then ``--repeats`` timed
   end-to-end ``predictor.predict(path)`` calls and ``--repeats`` model-only
   ``predictor.runtime(seq)`` calls on the prepared slice sequence. FLOPs per scan:
   ``count_flops`` of the SliceGraph on the real prepared slices plus the SequenceGraph on their
   features (fp32 eager). Achieved GFLOP/s = FLOPs / median model-only seconds.
5. **Agreement**: each variant's scan probability and per-slice probabilities against eager-fp32
   on the same input (max absolute difference; they agree within 1e-4, the ONNX requirement, for
   every variant: bf16 is reported but does not agree).

Rows (``{"case", "metric", "unit", "ichdet", "peer", "peer_value", "ratio", "goal", "goal_met",
"input", "variant", ...}``, ratio = ichdet / peer_value; a variant's rows carry ``precision``, the
dtype its runtime really ran, "fp32" or "bf16"): ``read_seconds``, ``prepare_seconds``
(peer: eager-fp32 end to end, so ratio = share of it), ``end_to_end_seconds``, ``model_seconds``
(peer: eager-fp32 on the same input), ``model_gflops`` (peer: the matmul peak of the row's
precision, so ratio = fraction of peak; bf16 rows get a second row against the fp32 peak), ``max_abs_diff`` (peer:
eager-fp32, peer_value 0, ratio null), ``first_call_s`` (compile-fp32-cl) and
``onnx_export_seconds``. Output is written atomically.
"""
from __future__ import annotations

import argparse
import copy
import csv
import inspect
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_common import (EMULATED_BF16_MAX_N, GOAL_CELL, MATMUL_MIN_TIMED_S, MATMUL_WARMUP_S, PRECISION_CHOICES,
                          PRECISION_HELP, matmul_peak, plan_precision, print_aligned, ratio, torch_machine_info,
                          write_json_atomic)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
CQ500_DIR = Path(os.environ.get("ICHDET_SHARED", REPO.parent / "shared")) / "data" / "cq500-ct-1"

# name -> how the variant runs: runtime, precision, channels_last, compile
VARIANTS = {
    "eager-fp32": {"runtime": "torch", "precision": "fp32", "channels_last": False, "compile": False},
    "eager-fp32-cl": {"runtime": "torch", "precision": "fp32", "channels_last": True, "compile": False},
    "bf16": {"runtime": "torch", "precision": "bf16", "channels_last": False, "compile": False},
    "bf16-cl": {"runtime": "torch", "precision": "bf16", "channels_last": True, "compile": False},
    "compile-fp32-cl": {"runtime": "torch", "precision": "fp32", "channels_last": True, "compile": True},
    "onnx": {"runtime": "onnx", "precision": "fp32", "channels_last": False, "compile": False},
}
BF16_VARIANTS = [v for v, spec in VARIANTS.items() if spec["precision"] == "bf16"]
BASELINE = "eager-fp32"  # plain contiguous PyTorch: the peer of every speed row
DEFAULT_VARIANT = "onnx"  # what predict's runtime "auto" runs once the bundle has model.onnx
FALLBACK_VARIANT = "eager-fp32-cl"  # ...and without it
CASES = ("synthetic", "cq500")
E2E_GOAL_S = 0.5  # seconds per 32-slice scan, end to end
E2E_GOAL_SLICES = 32
PEAK_GOAL = 0.5  # model FLOP/s as a fraction of the matching matmul peak
TOLERANCE = {"fp32": 1e-4, "bf16": 1e-4}  # max |probability difference| against eager-fp32 to agree


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _parse_list(s: str) -> list[str]:
    return [v.strip() for v in s.split(",") if v.strip()]


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


# ----------------------------------------------------------------------------------------------
# the bundle and the inputs
# ----------------------------------------------------------------------------------------------
def make_bundle(out: Path, quick: bool, seed: int = 0, encoder: str = "slice_cnn") -> tuple[Path, dict]:
    """The paper's proposed model (2 BiLSTM layers of 512 on the width-16 slice CNN) with seeded
    random weights as a real bundle folder; --quick: a tiny one of the same structure.
    encoder "efficientnet_lite0": the pretrained-encoder model instead (EfficientNet-Lite0, ImageNet
    weights where the pretrained extra is installed, three windows, 256 px; --quick: 64 px)."""
    import torch

    from ichdet.engine.bundle import save_bundle
    from ichdet.models import create_model, load_efficientnet_weights, pretrained_available
    from ichdet.preprocess.pipeline import PrepSpec

    if encoder == "efficientnet_lite0":
        torch.manual_seed(seed)
        net = create_model("efficientnet_lite0", num_classes=2)
        weights = "imagenet" if pretrained_available() else f"random (torch.manual_seed({seed}))"
        if pretrained_available():
            load_efficientnet_weights(net)
        hidden = 32 if quick else 512
        model = create_model("scan_lstm", encoder=net, lstm_layers=2, hidden=hidden).eval()
        kw = {"encoder_name": "efficientnet_lite0", "encoder_kw": net.config(), "lstm_layers": 2, "hidden": hidden}
        prep = PrepSpec(windows=("brain", "subdural", "bone"), size=64 if quick else 256, max_filter=2,
                        z_max_filter=True)
        save_bundle(out, model=model, model_name="scan_lstm", model_kwargs=kw, kind="scan", prep=prep, context=0,
                    operating_point={"method": "fixed", "threshold": 0.5}, metrics={}, config_yaml="",
                    data_hash="bench")
        desc = {"model": "scan_lstm", "model_kwargs": kw, "prep": prep.to_dict(), "kind": "scan", "context": 0,
                "weights": weights, "n_params": sum(p.numel() for p in model.parameters())}
        return out, desc
    if quick:
        kw = {"encoder_kw": {"in_channels": 1, "base_width": 4, "feature_dim": 32, "dropout": 0.5},
              "lstm_layers": 2, "hidden": 32}
        prep = PrepSpec(windows=("brain",), size=64, max_filter=2, z_max_filter=True)
    else:
        kw = {"encoder_kw": {"in_channels": 1, "base_width": 16, "feature_dim": 512, "dropout": 0.5},
              "lstm_layers": 2, "hidden": 512}
        prep = PrepSpec(windows=("brain",), size=256, max_filter=2, z_max_filter=True)
    torch.manual_seed(seed)
    model = create_model("scan_lstm", **kw).eval()
    save_bundle(out, model=model, model_name="scan_lstm", model_kwargs=kw, kind="scan", prep=prep, context=0,
                operating_point={"method": "fixed", "threshold": 0.5}, metrics={}, config_yaml="",
                data_hash="bench")
    desc = {"model": "scan_lstm", "model_kwargs": kw, "prep": prep.to_dict(), "kind": "scan", "context": 0,
            "weights": f"random (torch.manual_seed({seed}))", "n_params": sum(p.numel() for p in model.parameters())}
    return out, desc


def make_synthetic(tmp: Path, size: int, n_slices: int) -> Path:
    from ichdet.synth import make_cohort

    manifest = make_cohort(tmp / "cohort", n_scans=1, seed=0, size=size, n_slices=n_slices, slice_thickness=5.0,
                           fmt="dicom")
    with open(manifest, newline="") as fh:
        row = next(csv.DictReader(fh))
    return manifest.parent / row["path"]


def cq500_present() -> bool:
    return CQ500_DIR.is_dir() and any(CQ500_DIR.glob("*.dcm"))


# ----------------------------------------------------------------------------------------------
# variants
# ----------------------------------------------------------------------------------------------
def build_variant(name: str, bundle_path: Path, pristine, onnx_path: Path | None, threads: int):
    """A Predictor on the bundle whose runtime is the variant's, on its own copy of the weights
    (TorchRuntime(channels_last=True) converts the model it is given to channels_last in place,
    so sharing one model would make the "contiguous" variants run channels-last weights)."""
    from ichdet.engine.bundle import load_bundle
    from ichdet.inference import OnnxRuntime, Predictor, TorchRuntime

    spec = VARIANTS[name]
    b = load_bundle(bundle_path)
    if spec["runtime"] == "onnx":
        pred = Predictor(b, runtime="onnx", onnx_path=onnx_path)  # also checks the file's weights digest
        pred.runtime = OnnxRuntime(onnx_path, threads=threads)  # the same thread count as torch
    else:
        pred = Predictor(b)
        pred.runtime = TorchRuntime(copy.deepcopy(pristine), b.kind, precision=spec["precision"],
                                    channels_last=spec["channels_last"], compile=spec["compile"], **_cpu_kw(TorchRuntime))
    return pred


def _cpu_kw(runtime_cls) -> dict:
    """device="cpu" where TorchRuntime takes a device (it would pick a GPU when there is one): this
    benchmark measures the CPU."""
    return {"device": "cpu"} if "device" in inspect.signature(runtime_cls).parameters else {}


def runtime_precision(runtime) -> str:
    """The dtype a runtime really runs: TorchRuntime.precision ("fp32" / "bf16"); onnxruntime: fp32."""
    prec = getattr(runtime, "precision", "fp32")
    return prec if prec in ("fp32", "bf16") else "fp32"


def count_scan_flops(runtime, seq, features) -> dict:
    """FLOPs of one scan: the SliceGraph on the real prepared slices (in the runtime's batches)
    plus the SequenceGraph on their features (fp32, eager, ``count_flops``, whose LSTM matmuls
    are counted by formula)."""
    import torch

    from ichdet.models.flops import count_flops

    out = {"slice_graph": 0, "sequence_graph": 0}
    batch = runtime.slice_batch(seq.shape[-1])
    for i in range(0, seq.shape[0], batch):
        out["slice_graph"] += count_flops(runtime.slice_graph, seq[i:i + batch])
    if runtime.sequence_graph is not None:
        out["sequence_graph"] = count_flops(runtime.sequence_graph, torch.from_numpy(np.asarray(features, dtype=np.float32)))
    out["total"] = int(sum(out.values()))
    return out


def time_variant(pred, path: Path, seq, repeats: int, warmup: int) -> dict:
    first = None
    for k in range(warmup):
        t0 = time.perf_counter()
        pred.predict(path)
        if k == 0:
            first = time.perf_counter() - t0
    wall, fields, model = [], [], []
    res = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = pred.predict(path)
        wall.append(time.perf_counter() - t0)
        fields.append(float(res.seconds))
        t0 = time.perf_counter()
        pred.runtime(seq)
        model.append(time.perf_counter() - t0)
    return {"first_call_s": first, "wall": wall, "seconds_field": fields, "model": model,
            "e2e": _median(wall), "model_s": _median(model), "probability": float(res.probability),
            "slice_probabilities": np.asarray(res.slice_probabilities, dtype=np.float64),
            "runtime": pred.runtime.describe(), "precision": runtime_precision(pred.runtime)}


# ----------------------------------------------------------------------------------------------
# machine info, output
# ----------------------------------------------------------------------------------------------
def machine_info() -> dict:
    return torch_machine_info(("numpy", "torch", "onnxruntime", "onnx", "onnxscript", "pydicom", "psutil", "ichdet"))


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def print_table(rows: list[dict]) -> None:
    head = ("input", "variant", "metric", "unit", "ichdet", "peer_value", "ratio", "goal")
    print_aligned([head] + [(r.get("input") or "-", r.get("variant") or "-", r["metric"], r["unit"].split(" (")[0],
                             fmt(r["ichdet"]), fmt(r["peer_value"]), fmt(r["ratio"]), GOAL_CELL[r.get("goal_met")])
                            for r in rows])


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(r / 1024 / (1024 if sys.platform == "darwin" else 1), 1)  # KiB on Linux, bytes on macOS


# ----------------------------------------------------------------------------------------------
TASKS = ("detection", "segmentation")


def main(argv: list[str] | None = None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task", choices=TASKS, default="detection")
    task, rest = pre.parse_known_args(argv)
    if task.task == "segmentation":
        import bench_segment

        return bench_segment.main(rest)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=TASKS, default="detection",
                    help="detection (default: the proposed 3D model) or segmentation (bench_segment.py's options)")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 8-slice 64 x 64 synthetic scan, tiny model, 1 repeat, small matmuls, 1 torch "
                         "thread; cq500 and compile-fp32-cl only when named")
    ap.add_argument("--cases", default=None, help=f"comma list out of {','.join(CASES)} (default: all; "
                                                  "--quick: synthetic)")
    ap.add_argument("--variants", default=None, help=f"comma list out of {','.join(VARIANTS)} (default: all; "
                                                     "--quick: all but compile-fp32-cl)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per variant and input (5, at least 3; "
                                                              "1 with --quick)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed predict calls per variant and input (2)")
    ap.add_argument("--threads", type=int, default=None, help="torch / onnxruntime threads (default: all usable "
                                                              "cores; 1 with --quick)")
    ap.add_argument("--bundle", type=Path, default=None, help="benchmark this bundle instead of the random "
                                                              "paper-size model")
    ap.add_argument("--encoder", default="slice_cnn", choices=("slice_cnn", "efficientnet_lite0"),
                    help="the random bundle's slice encoder: the paper's CNN (default) or the pretrained "
                         "EfficientNet-Lite0 (three windows; ImageNet weights with the pretrained extra)")
    ap.add_argument("--size", type=int, default=None, help="synthetic slice side (512; 64 with --quick)")
    ap.add_argument("--slices", type=int, default=None, help="synthetic slices (32; 8 with --quick)")
    ap.add_argument("--matmul-sizes", default=None, help="square matmul sizes for the peak (2048,4096; 256,512 quick)")
    ap.add_argument("--precision", default="auto", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    a = ap.parse_args(argv)

    def fail(msg: str) -> int:  # one line on stderr, exit 2 (as argparse does for bad options)
        print(f"bench_infer.py: error: {msg}", file=sys.stderr)
        return 2

    q = a.quick
    variants = _parse_list(a.variants) if a.variants else [v for v in VARIANTS if not (q and v == "compile-fp32-cl")]
    cases = _parse_list(a.cases) if a.cases else (["synthetic"] if q else list(CASES))
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        return fail(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    bad = [c for c in cases if c not in CASES]
    if bad:
        return fail(f"unknown case(s) {', '.join(bad)}; choose from {', '.join(CASES)}")
    repeats = a.repeats if a.repeats is not None else (1 if q else 5)
    if repeats < 1 or (not q and repeats < 3):
        return fail(f"--repeats must be at least 3 (1 with --quick), got {repeats}")
    if a.warmup < 1:
        return fail(f"--warmup must be at least 1, got {a.warmup}")
    if a.threads is not None and a.threads < 1:
        return fail(f"--threads must be at least 1, got {a.threads}")
    if a.bundle is not None and not (a.bundle / "bundle.json").is_file():
        return fail(f"not a bundle folder (no bundle.json): {a.bundle}")
    size = a.size or (64 if q else 512)
    n_slices = a.slices or (8 if q else 32)
    try:
        mm_sizes = tuple(int(v) for v in _parse_list(a.matmul_sizes)) if a.matmul_sizes else \
            ((256, 512) if q else (2048, 4096))
    except ValueError:
        return fail(f"--matmul-sizes must be integers, got {a.matmul_sizes!r}")
    variants = list(dict.fromkeys(variants))
    if BASELINE not in variants:
        variants.insert(0, BASELINE)  # the peer of every speed row and of the agreement check

    skipped: list[dict] = []
    if q and a.variants is None:
        skipped.append({"case": "variant compile-fp32-cl",
                        "reason": "--quick leaves torch.compile out (tens of seconds of compiling); name it in --variants"})
    if q and a.cases is None:
        skipped.append({"case": "cq500", "reason": "--quick runs the synthetic case only; name cq500 in --cases"})

    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    # --quick is a smoke run, often beside other jobs: one thread does not stall on a busy core
    threads = a.threads or (1 if q else cores)
    torch.set_num_threads(threads)

    from ichdet.engine.bundle import load_bundle
    from ichdet.datasets.scans import volume_to_sequence
    from ichdet.inference.predictor import load_volume
    from ichdet.preprocess import prepare_volume

    t_start = time.time()
    machine = machine_info()
    plan = plan_precision(a.precision, [v for v in variants if v in BF16_VARIANTS], log)
    skipped += plan.skipped
    asked_variants = list(variants)
    variants = [v for v in variants if v not in BF16_VARIANTS or plan.run_bf16]
    mm_repeats = 3 if q else 5
    mm_times = (0.05, 0.1) if q else (MATMUL_WARMUP_S, MATMUL_MIN_TIMED_S)
    bf16_sizes: tuple[int, ...] = ()  # set once the variants are built: bf16 only if one of them runs bf16

    def peaks() -> dict:
        p = {"fp32": matmul_peak(torch.float32, mm_sizes, mm_repeats, *mm_times)}
        if bf16_sizes:
            p["bf16"] = matmul_peak(torch.bfloat16, bf16_sizes, mm_repeats, *mm_times)
        return p

    peak_runs: dict[str, dict] = {}

    rows: list[dict] = []
    results: dict[str, dict] = {}  # input -> per-variant timings and its facts
    build: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as td:
        tmp = Path(td)
        if a.bundle is None:
            bundle_path, model_desc = make_bundle(tmp / "bundle", q, encoder=a.encoder)
            model_desc["source"] = "random-weight bundle written by save_bundle into a temp folder"
        else:
            bundle_path = a.bundle
            meta = load_bundle(bundle_path).meta
            model_desc = {"source": str(a.bundle), "model": meta["model"]["name"], "model_kwargs": meta["model"]["kwargs"],
                          "prep": meta["prep"], "kind": meta["kind"], "context": meta.get("context", 0)}
        pristine = load_bundle(bundle_path).model  # never handed to a runtime itself: each variant gets a copy
        model_desc.setdefault("n_params", sum(p.numel() for p in pristine.parameters()))
        bundle = load_bundle(bundle_path)  # prep, kind, context for the read/prepare timings

        # ---- build the variants
        predictors = {}
        onnx_path = None
        for v in variants:
            log(f"building {v} ...")
            t0 = time.perf_counter()
            try:
                if VARIANTS[v]["runtime"] == "onnx":
                    from ichdet.inference.export import export_onnx

                    onnx_path = tmp / "model.onnx"
                    t1 = time.perf_counter()
                    export_onnx(load_bundle(bundle_path), onnx_path)
                    build["onnx_export_seconds"] = time.perf_counter() - t1
                    build["onnx_mb"] = round(onnx_path.stat().st_size / 1e6, 2)
                    log(f"  export_onnx {build['onnx_export_seconds']:.1f} s, {build['onnx_mb']} MB")
                predictors[v] = build_variant(v, bundle_path, pristine, onnx_path, threads)
            except Exception as e:  # noqa: BLE001 - a variant that cannot run is reported, not fatal
                if v == BASELINE:
                    raise
                skipped.append({"case": f"variant {v}", "reason": f"could not be built: {type(e).__name__}: "
                                                                  f"{str(e).splitlines()[0][:200] if str(e) else ''}"})
                log(f"  {v} skipped: {e}")
                continue
            rt = predictors[v].runtime
            build[v] = {"build_seconds": time.perf_counter() - t0, "runtime": rt.describe(),
                        "precision": runtime_precision(rt)}
            if build[v]["precision"] != VARIANTS[v]["precision"]:
                log(f"  {v}: asked {VARIANTS[v]['precision']}, the runtime runs {build[v]['precision']}")

        # ---- the matmul peak, before any timed run; bf16 only when a variant runs bf16 (where bf16 is
        # emulated a bf16 matmul of n = 4096 takes about a minute, so there its sizes are capped)
        precision_info = plan.to_dict()
        precision_info["runtime_precision"] = {v: build[v]["precision"] for v in predictors}
        if any(build[v]["precision"] == "bf16" for v in predictors):
            bf16_sizes = plan.bf16_sizes(mm_sizes)
        elif plan.run_bf16 and any(v in predictors for v in BF16_VARIANTS):
            precision_info["note"] += ("; but their TorchRuntime(precision='bf16') runs fp32 here (bf16 is not native), "
                                       "so their rows are fp32")
            log(f"  {precision_info['note']}")
        log(f"matmul peak (torch.mm, n={mm_sizes}{f', bf16 n={bf16_sizes}' if bf16_sizes else ''}, "
            f"{threads} threads) ...")
        peak_runs["before"] = peaks()
        log("  " + ", ".join(f"{k} {p['gflops']:.0f} GFLOP/s" for k, p in peak_runs["before"].items()))

        # ---- the inputs
        inputs: list[tuple[str, Path]] = []
        for c in cases:
            if c == "cq500":
                if cq500_present():
                    inputs.append(("cq500", CQ500_DIR))
                else:
                    skipped.append({"case": "cq500", "reason": f"CQ500 series not found at {CQ500_DIR}"})
            else:
                log(f"writing the synthetic series ({n_slices} x {size} x {size}, 5 mm) ...")
                inputs.append(("synthetic", make_synthetic(tmp, size, n_slices)))

        for k, (name, path) in enumerate(inputs):
            if k:
                peak_runs[f"before {name}"] = peaks()
            log(f"{name}: read + prepare ...")
            load_volume(path)  # warm-up (file cache, decoders)
            reads, preps = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                volume = load_volume(path)
                reads.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                image = prepare_volume(volume, bundle.prep)
                preps.append(time.perf_counter() - t0)
            seq = volume_to_sequence(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), bundle.context)
            base_rt = predictors[BASELINE].runtime
            flop_parts = count_scan_flops(base_rt, seq, base_rt(seq).features)
            flops = flop_parts["total"]
            label = f"{name} {'x'.join(str(s) for s in volume.shape)}"
            info = {"label": label, "shape": list(volume.shape), "prepared_shape": list(image.shape),
                    "sequence_shape": list(seq.shape), "flops": flops, "flop_parts": flop_parts,
                    "read": reads, "prepare": preps,
                    "read_s": _median(reads), "prepare_s": _median(preps), "variants": {}}
            results[name] = info
            log(f"  read {info['read_s']:.3f} s, prepare {info['prepare_s']:.3f} s, sequence {tuple(seq.shape)}, "
                f"{flops / 1e9:.1f} GFLOP per scan")
            for v, pred in list(predictors.items()):
                log(f"{name}: {v} ...")
                try:
                    r = time_variant(pred, path, seq, repeats, a.warmup)
                except Exception as e:  # noqa: BLE001 - e.g. torch.compile without a working compiler
                    if v == BASELINE:
                        raise
                    skipped.append({"case": f"{name} {v}", "reason": f"failed: {type(e).__name__}: "
                                                                     f"{str(e).splitlines()[0][:200] if str(e) else ''}"})
                    log(f"  {v} failed: {e}")
                    predictors.pop(v)  # not retried on the next input
                    continue
                info["variants"][v] = r
                log(f"  end to end {r['e2e']:.3f} s (first call {r['first_call_s']:.2f} s), model {r['model_s']:.3f} s, "
                    f"{flops / r['model_s'] / 1e9:.1f} GFLOP/s, p={r['probability']:.6f}")
        peak_runs["after"] = peaks()
    peak = {k: max(p[k]["gflops"] for p in peak_runs.values()) for k in peak_runs["before"]}
    log("peak used: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()))

    # ---- rows
    for name, info in results.items():
        base = info["variants"][BASELINE]
        label = info["label"]
        e2e_goal_applies = name == "synthetic" and info["shape"] == [E2E_GOAL_SLICES, 512, 512]
        common_in = {"input": name, "input_description": label, "shape": info["shape"],
                     "prepared_shape": info["prepared_shape"], "flops_per_scan": info["flops"],
                     "flops_parts": info["flop_parts"], "repeats": repeats}
        for metric, key, what in (("read_seconds", "read", "load_volume(path): DICOM read -> HU volume"),
                                  ("prepare_seconds", "prepare", "prepare_volume(volume, bundle.prep)")):
            rows.append({"case": f"{label} {metric.split('_')[0]}", **common_in, "variant": None, "precision": None,
                         "metric": metric, "unit": "s (median)", "ichdet": info[f"{key}_s"],
                         "peer": f"{BASELINE} end to end (same input)", "peer_value": base["e2e"],
                         "ratio": ratio(info[f"{key}_s"], base["e2e"]), "times": info[key], "what": what,
                         "goal": "none; ratio = share of the eager-fp32 end-to-end time", "goal_met": None})
        for v, r in info["variants"].items():
            spec = VARIANTS[v]
            dtype = r["precision"]  # what the runtime really ran (bf16 asked may run fp32 where not native)
            tol = TOLERANCE[dtype]
            d_prob = abs(r["probability"] - base["probability"])
            d_slice = float(np.max(np.abs(r["slice_probabilities"] - base["slice_probabilities"])))
            agrees = bool(max(d_prob, d_slice) <= tol)
            r.update(max_abs_prob_diff=d_prob, max_abs_slice_prob_diff=d_slice, tolerance=tol, agrees=agrees)
            common = {"case": f"{label} {v}", **common_in, "variant": v, "runtime": r["runtime"], "dtype": dtype,
                      "precision": dtype, "precision_asked": spec["precision"],
                      "memory_format": "channels_last" if spec["channels_last"] else "contiguous",
                      "compiled": spec["compile"], "agrees": agrees, "tolerance": tol,
                      "max_abs_prob_diff": d_prob, "max_abs_slice_prob_diff": d_slice}
            if e2e_goal_applies:
                goal, met = f"<= {E2E_GOAL_S} s per {E2E_GOAL_SLICES}-slice scan end to end", bool(r["e2e"] <= E2E_GOAL_S)
            elif name == "synthetic":
                goal, met = (f"<= {E2E_GOAL_S} s per {E2E_GOAL_SLICES}-slice 512 x 512 scan end to end (not judged: "
                             "this run's synthetic scan is smaller)"), None
            else:
                goal, met = "none (the 0.5 s goal is for a 32-slice scan); ratio = time against eager-fp32", None
            rows.append({**common, "metric": "end_to_end_seconds", "unit": "s (median wall, predict(path))",
                         "ichdet": r["e2e"], "peer": f"{BASELINE} (contiguous PyTorch, same input, same run)",
                         "peer_value": base["e2e"], "ratio": ratio(r["e2e"], base["e2e"]), "goal": goal,
                         "goal_met": met, "wall_seconds": r["wall"], "predict_seconds_field": r["seconds_field"],
                         "predict_seconds_field_median": _median(r["seconds_field"]), "first_call_s": r["first_call_s"],
                         "seconds_per_slice": r["e2e"] / info["shape"][0]})
            rows.append({**common, "metric": "model_seconds", "unit": "s (median, runtime(seq))", "ichdet": r["model_s"],
                         "peer": f"{BASELINE} runtime (same input, same run)", "peer_value": base["model_s"],
                         "ratio": ratio(r["model_s"], base["model_s"]), "model_seconds": r["model"],
                         "goal": "none; ratio < 1 is faster than eager-fp32", "goal_met": None})
            gflops = info["flops"] / r["model_s"] / 1e9
            r["gflops"] = gflops
            peak_keys = ["bf16", "fp32"] if dtype == "bf16" else ["fp32"]
            for pk in peak_keys:
                frac = gflops / peak[pk]
                r[f"fraction_of_{pk}_peak"] = frac
                judged = pk == peak_keys[0] and not (pk == "bf16" and plan.emulated)
                rows.append({**common, "metric": "model_gflops", "unit": "GFLOP/s", "ichdet": gflops,
                             "peer": f"torch.mm {pk} peak (n={','.join(map(str, bf16_sizes if pk == 'bf16' else mm_sizes))})",
                             "peer_value": peak[pk], "ratio": frac, "fraction_of_peak": frac, "peak_dtype": pk,
                             "goal": f"ratio >= {PEAK_GOAL} (fraction of the measured {pk} matmul peak)"
                                     + ("" if pk == peak_keys[0] else "; for reference, judged against the bf16 peak")
                                     + ("; not judged: bf16 is emulated here, so its peak is no hardware figure"
                                        if pk == "bf16" and plan.emulated else ""),
                             "goal_met": bool(frac >= PEAK_GOAL) if judged else None})
            rows.append({**common, "metric": "max_abs_diff", "unit": "probability",
                         "ichdet": float(max(d_prob, d_slice)), "peer": f"{BASELINE} outputs (same input)",
                         "peer_value": 0.0, "ratio": None, "goal": f"<= {tol:g} (scan and slice probabilities)",
                         "goal_met": agrees})
            if spec["compile"]:
                rows.append({**common, "metric": "first_call_s", "unit": "s (first predict call: compile + run)",
                             "ichdet": r["first_call_s"], "peer": f"{BASELINE} first predict call (same input)",
                             "peer_value": base["first_call_s"], "ratio": ratio(r["first_call_s"], base["first_call_s"]),
                             "goal": "none; a one-off cost per process", "goal_met": None})
    if "onnx_export_seconds" in build:
        rows.append({"case": "onnx export", "input": None, "variant": "onnx", "precision": "fp32",
                     "metric": "onnx_export_seconds",
                     "unit": "s (once)", "ichdet": build["onnx_export_seconds"], "peer": "none", "peer_value": None,
                     "ratio": None, "onnx_mb": build["onnx_mb"], "goal": "none; a one-off cost per bundle",
                     "goal_met": None})

    # ---- summary
    def brief(info: dict, v: str) -> dict:
        r = info["variants"][v]
        out = {"variant": v, "precision": r["precision"], "end_to_end_seconds": r["e2e"], "model_seconds": r["model_s"], "gflops": r["gflops"],
               "fraction_of_fp32_peak": r["fraction_of_fp32_peak"], "agrees": r["agrees"],
               "max_abs_diff": max(r["max_abs_prob_diff"], r["max_abs_slice_prob_diff"])}
        if "fraction_of_bf16_peak" in r:
            out["fraction_of_bf16_peak"] = r["fraction_of_bf16_peak"]
        return out

    summary: dict = {"default_variant": DEFAULT_VARIANT, "fallback_variant": FALLBACK_VARIANT, "baseline": BASELINE,
                     "by_input": {}}
    fastest = None
    # a variant agrees only if it agrees on every input (bf16 may pass on one scan and not another)
    agree_everywhere = {v for v in variants if all(v in i["variants"] and i["variants"][v]["agrees"]
                                                   for i in results.values())}
    summary["agreeing_on_every_input"] = sorted(agree_everywhere)
    for name, info in results.items():
        vs = info["variants"]
        agreeing = [v for v in vs if v in agree_everywhere]
        best = min(agreeing, key=lambda v: vs[v]["e2e"]) if agreeing else None
        summary["by_input"][name] = {
            "input": info["label"], "read_seconds": info["read_s"], "prepare_seconds": info["prepare_s"],
            "flops_per_scan": info["flops"],
            "default": brief(info, DEFAULT_VARIANT) if DEFAULT_VARIANT in vs else None,
            "fallback": brief(info, FALLBACK_VARIANT) if FALLBACK_VARIANT in vs else None,
            "fastest_agreeing": brief(info, best) if best else None,
            "all": {v: brief(info, v) for v in vs}}
    ref_input = "synthetic" if "synthetic" in results else next(iter(results), None)
    if ref_input is not None and summary["by_input"][ref_input]["fastest_agreeing"]:
        fastest = summary["by_input"][ref_input]["fastest_agreeing"]["variant"]
    summary["fastest_agreeing_input"] = ref_input

    try:
        machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        machine["load_average_end"] = None
    out = {"benchmark": "bench_infer", "machine": machine,
           "settings": {"quick": q, "cases": cases, "variants": variants, "variants_asked": asked_variants,
                        "precision": precision_info, "repeats": repeats, "warmup": a.warmup,
                        "threads": threads, "synthetic": {"size": size, "slices": n_slices, "slice_thickness_mm": 5.0,
                                                          "format": "DICOM (ichdet.synth.make_cohort)"},
                        "model": model_desc, "slice_batch": predictors[BASELINE].runtime.slice_batch(model_desc["prep"]["size"]),
                        "tolerance": TOLERANCE, "matmul_sizes": list(mm_sizes), "matmul_repeats": mm_repeats,
                        "timing": (f"per input and variant: {a.warmup} warm-up predict calls, then {repeats} x "
                                   "(timed predict(path), timed runtime(seq)); medians reported"),
                        "flops": "ichdet.models.flops.count_flops (FlopCounterMode): SliceGraph on the prepared "
                                 "slices in the runtime's batches + SequenceGraph on their features, fp32 eager; "
                                 "count_flops adds the LSTM's matmuls by formula (layers x directions x Z x "
                                 "2 * 4H * (I + H)), which FlopCounterMode does not see",
                        "build": build, "peak_rss_mb": peak_rss_mb()},
           "peaks": {"fp32_gflops": peak["fp32"], "bf16_gflops": peak.get("bf16"), "runs": peak_runs,
                     "matmul_sizes": {"fp32": list(mm_sizes), "bf16": list(bf16_sizes) or None},
                     "bf16_emulated": plan.emulated if bf16_sizes else None,
                     "method": f"best of >= {mm_repeats} calls and >= {mm_times[1]:g} s per size after {mm_times[0]:g} s "
                               "warm-up; the peak is the highest of the runs (before, between the inputs, after); "
                               "bf16 only when a variant's runtime runs bf16 (null otherwise), at sizes capped at "
                               f"{EMULATED_BF16_MAX_N} where bf16 is emulated"},
           "fastest_agreeing_variant": fastest, "summary": summary,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - t_start, 1),
           "skipped": skipped, "results": rows}
    write_json_atomic(a.out, out)
    print_table(rows)
    print("matmul peak: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items())
          + f"; peak RSS {out['settings']['peak_rss_mb']} MB")
    print(f"precision: {precision_info['note']}")
    for name, s in summary["by_input"].items():
        d, f = s["default"], s["fastest_agreeing"]
        print(f"{s['input']}: default {DEFAULT_VARIANT} "
              + (f"{d['end_to_end_seconds']:.3f} s end to end" if d else "not run")
              + (f"; fastest agreeing {f['variant']} {f['end_to_end_seconds']:.3f} s" if f else "; no variant agrees"))
    for s in skipped:
        print(f"skipped {s['case']}: {s['reason']}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
