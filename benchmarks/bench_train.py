#!/usr/bin/env python
"""Benchmark: slice-CNN training throughput, fraction of the measured matmul peak, data stall.

    python benchmarks/bench_train.py --out benchmarks/results/bench_train.json [--quick]
                                     [--steps 5] [--warmup 2] [--batch 25] [--size 256]
                                     [--widths 8,16,32] [--base-width 16] [--variants ...]
                                     [--precision auto|fp32|bf16]

What runs, all in this one process with torch using every core (``torch.get_num_threads()``):

0. **Precision** (``--precision``, ``bench_common.plan_precision``): ``auto`` runs the bf16
   variants only where bf16 is native (``ichdet.engine.precision.cpu_features().native_bf16``:
   AVX512-BF16 / AMX in use) and lists each of them in ``skipped`` with the reason elsewhere;
   ``fp32`` skips them everywhere; ``bf16`` runs them even where bf16 is emulated.
1. **Matmul peak**: ``torch.mm`` of square fp32 matrices (n = 2048 and 4096), and of bf16 ones
   only when a bf16 variant runs (capped at n = 512 where bf16 is emulated), best of a few
   repeats, GFLOP/s = 2 n^3 / t. Measured before, between and after the training runs; the peak
   is the highest of the three (the conservative choice for a fraction of peak).
2. **Training step** of ``create_model("slice_cnn", base_width=W)`` (``--encoder efficientnet_lite0``:
   the ImageNet EfficientNet-Lite0 on three-channel slices, no width sweep) on a batch of 25 one-channel
   256 x 256 slices: forward, cross-entropy, backward, Adam step (lr 1e-4, the paper's recipe),
   on pre-batched random tensors. Variants at the default width: ``fp32`` (contiguous NCHW),
   ``fp32-cl`` (channels_last), ``bf16`` (the autocast of ``resolve_precision("bf16")``, fp32
   master weights) and ``bf16-cl``; then the base widths ``--widths`` in fp32 and in the
   fastest variant. FLOPs per step come from ``torch.utils.flop_counter.FlopCounterMode`` over
   forward + loss + backward (matmul/conv FLOPs; the optimizer step, ReLU and pooling are not
   counted), achieved GFLOP/s = FLOPs / median step time.
3. **Data stall**: a real input pipeline. A synthetic cohort (``ichdet.synth.make_cohort``, 8 scans
   of 24 slices at 512 x 512) is read (``ichdet.io.read_volume``) and prepared
   (``prepare_volume(..., PrepSpec(size=256))``) into memory; a torch ``DataLoader`` draws batches
   of 25 random slices with augmentation (``ichdet.datasets.augment.augment_slice`` when it
   exists, else a MONAI ``Rotate`` by a random angle in +-15 degrees plus a random left-right
   ``Flip``) and feeds the fastest variant's training step, with ``num_workers`` 0 and 1.
   Stall fraction = time spent waiting for the next batch / total step time (wait + compute).

Rows (``{"case", "metric", "unit", "ichdet", "peer", "peer_value", "ratio", ...}``, ratio =
ichdet / peer_value; ``precision`` = the arithmetic the step really ran, "fp32" or "bf16"):
``train_slices_per_s`` (peer: fp32 contiguous at the same width), ``train_gflops`` (peer: the
measured matmul peak of the row's precision, so ratio = fraction of peak; bf16 variants get a
second row against the fp32 peak), ``data_stall_fraction`` (peer: zero stall with
pre-batched tensors, so ratio is null) and ``loader_step_seconds`` (peer: the same step on
pre-batched tensors). Output is written atomically.
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_common import (EMULATED_BF16_MAX_N, GOAL_CELL, MATMUL_MIN_TIMED_S, MATMUL_WARMUP_S, PRECISION_CHOICES, PRECISION_HELP,
                          PrecisionPlan, fmt, matmul_peak, plan_precision, print_aligned, ratio, torch_machine_info,
                          write_json_atomic)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ichdet.engine.memory import keep_freed_memory  # noqa: E402
from ichdet.engine.precision import Precision, resolve_precision  # noqa: E402

VARIANTS = {  # name -> (precision asked, channels_last)
    "fp32": ("fp32", False),
    "fp32-cl": ("fp32", True),
    "bf16": ("bf16", False),
    "bf16-cl": ("bf16", True),
}
BF16_VARIANTS = [v for v, (prec, _) in VARIANTS.items() if prec == "bf16"]
BASELINE = "fp32"
LR = 1e-4  # Adam learning rate of the paper's slice-CNN recipe
PEAK_GOAL = 0.35  # achieved FLOP/s of the training step, as a fraction of the matmul peak
STALL_GOAL = 0.10  # fraction of step time waiting on data
AUG_MAX_DEG = 15.0


# ----------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------
class _ReferenceSliceCNN(nn.Module):
    """Stand-in with the documented SliceCNN shape, used only when ``ichdet.models`` is missing."""

    def __init__(self, in_channels: int = 1, base_width: int = 16, n_units: int = 5, feature_dim: int = 512,
                 num_classes: int = 2, dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, w = in_channels, base_width
        for _ in range(n_units):
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1),
                       nn.ReLU(), nn.MaxPool2d(2)]
            c, w = w, w * 2
        layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(w, feature_dim), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(feature_dim, feature_dim), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(feature_dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


ENCODERS = ("slice_cnn", "efficientnet_lite0")


def make_model(base_width: int, encoder: str = "slice_cnn") -> tuple[nn.Module, str]:
    """The network a step trains: the slice CNN of `base_width`, or EfficientNet-Lite0 (three
    channels, ImageNet weights where the pretrained extra is installed; base_width unused)."""
    try:
        from ichdet.models import create_model
    except ImportError:
        return _ReferenceSliceCNN(base_width=base_width), "benchmark stand-in (ichdet.models not importable)"
    if encoder == "efficientnet_lite0":
        from ichdet.models import load_efficientnet_weights, pretrained_available

        model = create_model("efficientnet_lite0", num_classes=2)
        if pretrained_available():
            load_efficientnet_weights(model)
        return model, "ichdet.models.create_model('efficientnet_lite0')" + (" + ImageNet" if pretrained_available() else "")
    return create_model("slice_cnn", in_channels=1, base_width=base_width), "ichdet.models.create_model('slice_cnn')"


def _logits(out) -> torch.Tensor:
    if isinstance(out, dict):
        out = out.get("logits", next(iter(out.values())))
    elif isinstance(out, (tuple, list)):
        out = out[0]
    return out


def count_train_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, str, int | None]:
    """FLOPs of forward + cross-entropy + backward (FlopCounterMode); also ichdet's count_flops if present."""
    from torch.utils.flop_counter import FlopCounterMode
    m = copy.deepcopy(model).train()
    with FlopCounterMode(display=False) as fc:
        loss = F.cross_entropy(_logits(m(x)).float(), y)
        loss.backward()
    total = int(fc.get_total_flops())
    cross = None
    try:
        from ichdet.models.flops import count_flops
        r = count_flops(copy.deepcopy(model), x, backward=True)
        cross = int(r if isinstance(r, (int, float)) else r.get("total", r.get("flops")))
    except Exception:  # noqa: BLE001  (optional cross-check only; the module may not exist yet)
        cross = None
    return total, "torch.utils.flop_counter.FlopCounterMode (forward + loss + backward)", cross


# ----------------------------------------------------------------------------------------------
# training step
# ----------------------------------------------------------------------------------------------
def variant_precision(variant: str, plan: PrecisionPlan) -> Precision:
    """The arithmetic of `variant`'s step: fp32, or for a bf16 variant `resolve_precision("bf16")`
    (bf16 autocast where native); where bf16 is emulated and --precision bf16 still asks for it, a
    bf16 Precision all the same (resolve_precision would run fp32 there), so the row measures bf16."""
    asked = VARIANTS[variant][0]
    if asked == "fp32":
        return resolve_precision("fp32")
    if plan.emulated:
        return Precision("cpu", "bf16", "bf16", f"bf16 autocast, emulated (--precision bf16) on {plan.cpu}")
    return resolve_precision("bf16")


class Trainer:
    """One model + Adam in one variant; ``step(x, y)`` is the timed training step, run in
    ``precision`` (``precision.autocast()`` around the forward pass; fp32 master weights)."""

    def __init__(self, base_width: int, variant: str, precision: Precision | None = None, seed: int = 0,
                 encoder: str = "slice_cnn") -> None:
        torch.manual_seed(seed)
        self.precision = precision or resolve_precision(VARIANTS[variant][0])
        self.channels_last = VARIANTS[variant][1]
        self.model, self.model_source = make_model(base_width, encoder)
        self.in_channels = getattr(self.model, "in_channels", 1)
        self.model.train()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.in_channels == 3:  # grey slices as three planes (the loader's samples)
            x = x.expand(-1, 3, -1, -1)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        x = self.prepare(x)
        self.opt.zero_grad(set_to_none=True)
        with self.precision.autocast():
            out = _logits(self.model(x))
        loss = F.cross_entropy(out.float(), y)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def time_variant(base_width: int, variant: str, precision: Precision, batch: int, size: int, warmup: int,
                 steps: int, encoder: str = "slice_cnn") -> dict:
    tr = Trainer(base_width, variant, precision, encoder=encoder)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, tr.in_channels, size, size, generator=g)
    y = torch.randint(0, 2, (batch,), generator=g)
    flops, flop_method, cross = count_train_flops(tr.model, x, y)
    for _ in range(warmup):
        tr.step(x, y)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = tr.step(x, y)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"base_width": base_width, "encoder": encoder, "variant": variant, "precision": tr.precision.dtype,
            "precision_note": tr.precision.note, "times": times, "step_seconds": t,
            "slices_per_s": batch / t, "flops_per_step": flops, "gflops": flops / t / 1e9,
            "flop_method": flop_method, "count_flops_crosscheck": cross, "model_source": tr.model_source,
            "n_params": sum(p.numel() for p in tr.model.parameters()), "final_loss": loss,
            "loss_finite": bool(np.isfinite(loss))}


# ----------------------------------------------------------------------------------------------
# real input pipeline
# ----------------------------------------------------------------------------------------------
def _augment_fn():
    try:
        from ichdet.datasets.augment import augment_slice
        return augment_slice, "ichdet.datasets.augment.augment_slice"
    except ImportError:
        pass
    from monai.transforms import Flip, Rotate

    flip = Flip(spatial_axis=1)

    def monai_augment(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        angle = float(np.deg2rad(rng.uniform(-AUG_MAX_DEG, AUG_MAX_DEG)))
        out = Rotate(angle=angle, keep_size=True, mode="bilinear", padding_mode="zeros")(img)
        if rng.random() < 0.5:
            out = flip(out)
        return torch.as_tensor(out).float()
    return monai_augment, (f"MONAI Rotate (+-{AUG_MAX_DEG:g} deg) + random Flip(spatial_axis=1) "
                           "(ichdet.datasets.augment.augment_slice not available)")


class SliceSamples(torch.utils.data.Dataset):
    """Prepared volumes in memory -> (augmented (C, H, W) float32 slice, slice label)."""

    def __init__(self, volumes: list[np.ndarray], labels: list[np.ndarray], augment, seed: int = 0) -> None:
        self.volumes, self.augment, self.seed = volumes, augment, seed
        self.index = [(v, z) for v, vol in enumerate(volumes) for z in range(vol.shape[1])]
        self.labels = [int(labels[v][z]) for v, z in self.index]
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        v, z = self.index[i]
        img = torch.from_numpy(np.ascontiguousarray(self.volumes[v][:, z]))
        return self.augment(img, self.rng), self.labels[i]


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.rng = np.random.default_rng(info.dataset.seed + 1000 * (worker_id + 1))


def build_cohort(tmp: Path, n_scans: int, src_size: int, n_slices: int, size: int, log) -> tuple[list, list, dict]:
    from ichdet.io import read_volume
    from ichdet.preprocess.pipeline import PrepSpec, prepare_volume
    from ichdet.synth import make_cohort
    t0 = time.perf_counter()
    manifest = make_cohort(tmp / "cohort", n_scans=n_scans, seed=0, size=src_size, n_slices=n_slices)
    t_synth = time.perf_counter() - t0
    slice_labels: dict[str, dict[int, int]] = {}
    with open(manifest.parent / "slice_labels.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            slice_labels.setdefault(r["scan_id"], {})[int(r["slice_index"])] = int(r["label"])
    spec = PrepSpec(size=size)
    volumes, labels = [], []
    t0 = time.perf_counter()
    with open(manifest, newline="") as fh:
        for r in csv.DictReader(fh):
            arr = prepare_volume(read_volume(manifest.parent / r["path"]), spec).astype(np.float32, copy=False)
            volumes.append(arr)
            lab = slice_labels.get(r["scan_id"], {})
            labels.append(np.array([lab.get(z, int(r["label"])) for z in range(arr.shape[1])]))
    t_prep = time.perf_counter() - t0
    log(f"  cohort: {n_scans} scans synthesised in {t_synth:.1f} s, read + prepared in {t_prep:.1f} s")
    return volumes, labels, {"n_scans": n_scans, "source_size": src_size, "n_slices": n_slices,
                             "prep_spec": spec.to_dict(), "synth_seconds": round(t_synth, 2),
                             "read_prepare_seconds": round(t_prep, 2),
                             "n_samples": int(sum(v.shape[1] for v in volumes))}


def time_loader(trainer: Trainer, ds: SliceSamples, workers: int, batch: int, warmup: int, steps: int) -> dict:
    n = batch * (warmup + steps)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=n,
                                             generator=torch.Generator().manual_seed(workers))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                                         worker_init_fn=_worker_init if workers else None, drop_last=True)
    it = iter(loader)  # starts the workers; their start-up falls into the warm-up steps
    waits, totals = [], []
    for k in range(warmup + steps):
        t0 = time.perf_counter()
        x, y = next(it)
        t1 = time.perf_counter()
        trainer.step(x, y)
        t2 = time.perf_counter()
        if k >= warmup:
            waits.append(t1 - t0)
            totals.append(t2 - t0)
    del it, loader
    return {"workers": workers, "wait_seconds": waits, "step_seconds": totals,
            "stall_fraction": sum(waits) / sum(totals), "median_step_seconds": statistics.median(totals)}


# ----------------------------------------------------------------------------------------------
# machine info, output
# ----------------------------------------------------------------------------------------------
def machine_info() -> dict:
    return torch_machine_info(("numpy", "torch", "monai", "psutil", "ichdet"))


def print_table(rows: list[dict]) -> None:
    head = ("case", "metric", "ichdet", "peer", "peer_value", "ratio", "goal")
    print_aligned([head] + [(r["case"], r["metric"], fmt(r["ichdet"]), r["peer"], fmt(r["peer_value"]), fmt(r["ratio"]),
                             GOAL_CELL[r.get("goal_met")]) for r in rows])


def _parse_list(s: str, cast=str) -> list:
    return [cast(v.strip()) for v in s.split(",") if v.strip()]


# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 64 x 64 slices, batch 4, 1 warm-up + 1 timed step, small matmuls, tiny cohort, "
                         "1 torch thread")
    ap.add_argument("--batch", type=int, default=None, help="slices per step (25; 4 with --quick)")
    ap.add_argument("--size", type=int, default=None, help="slice side in pixels (256; 64 with --quick)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per variant (2; 1 with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant (5; 1 with --quick)")
    ap.add_argument("--base-width", type=int, default=16, help="base width of the layout/precision variants")
    ap.add_argument("--widths", default="8,16,32", help="base widths to sweep (slice_cnn only)")
    ap.add_argument("--encoder", default="slice_cnn", choices=ENCODERS,
                    help="the network: the paper's slice CNN (default) or EfficientNet-Lite0 (three channels, "
                         "ImageNet weights with the pretrained extra; no width sweep)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list out of {','.join(VARIANTS)}")
    ap.add_argument("--precision", default="auto", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    ap.add_argument("--loader-steps", type=int, default=None, help="timed steps per DataLoader setting (8; 1 with --quick)")
    ap.add_argument("--loader-workers", default="0,1", help="DataLoader num_workers values for the stall test")
    ap.add_argument("--matmul-sizes", default=None, help="square matmul sizes for the peak (2048,4096; 256,512 quick)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all usable cores; 1 with --quick)")
    a = ap.parse_args(argv)

    q = a.quick
    batch = a.batch or (4 if q else 25)
    size = a.size or (64 if q else 256)
    warmup = a.warmup if a.warmup is not None else (1 if q else 2)
    steps = a.steps or (1 if q else 5)
    loader_steps = a.loader_steps or (1 if q else 8)
    widths = _parse_list(a.widths, int)
    variants = _parse_list(a.variants)
    workers_list = _parse_list(a.loader_workers, int)
    mm_sizes = tuple(_parse_list(a.matmul_sizes, int)) if a.matmul_sizes else ((256, 512) if q else (2048, 4096))
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {bad}; choose from {list(VARIANTS)}")
    if BASELINE not in variants:
        variants.insert(0, BASELINE)
    if size < 32 or size % 32:
        ap.error("--size must be a multiple of 32 (five 2x2 pools), at least 32")
    if batch < 1 or steps < 1 or warmup < 0 or any(w < 1 for w in widths) or a.base_width < 1:
        ap.error("--batch, --steps, --widths and --base-width must be >= 1, --warmup >= 0")
    if any(w < 0 for w in workers_list):
        ap.error("--loader-workers must be >= 0")

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    # --quick is a smoke run, often beside other jobs: one thread does not stall on a busy core
    torch.set_num_threads(a.threads or (1 if q else cores))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t_start = time.time()
    machine = machine_info()
    # as `ichdet train` does: freed activations stay in the heap (ICHDET_SYSTEM_MALLOC=1: glibc's defaults)
    machine["malloc"] = "keeps freed memory" if keep_freed_memory() else "system default"
    plan = plan_precision(a.precision, [v for v in variants if v in BF16_VARIANTS], log)
    asked_variants = list(variants)
    variants = [v for v in variants if v not in BF16_VARIANTS or plan.run_bf16]
    precisions = {v: variant_precision(v, plan) for v in variants}
    mm_repeats = 3 if q else 5
    mm_times = (0.05, 0.1) if q else (MATMUL_WARMUP_S, MATMUL_MIN_TIMED_S)
    bf16_sizes = plan.bf16_sizes(mm_sizes) if plan.run_bf16 else ()

    def peaks() -> dict:  # the bf16 peak only when a bf16 variant runs (emulated, it takes minutes at n=4096)
        p = {"fp32": matmul_peak(torch.float32, mm_sizes, mm_repeats, *mm_times)}
        if bf16_sizes:
            p["bf16"] = matmul_peak(torch.bfloat16, bf16_sizes, mm_repeats, *mm_times)
        return p

    def peak_line(p: dict) -> str:
        return ", ".join(f"{k} {v['gflops']:.0f} GFLOP/s" for k, v in p.items())

    log(f"matmul peak (torch.mm, n={mm_sizes}, {torch.get_num_threads()} threads) ...")
    peaks_before = peaks()
    log(f"  {peak_line(peaks_before)}")

    runs: dict[tuple[int, str], dict] = {}

    def net(width: int) -> str:  # a row's network
        return f"slice_cnn w{width}" if a.encoder == "slice_cnn" else a.encoder

    def run(width: int, variant: str) -> dict:
        if (width, variant) not in runs:
            log(f"train step: base width {width}, {variant} ({precisions[variant].note}) ...")
            r = time_variant(width, variant, precisions[variant], batch, size, warmup, steps, a.encoder)
            log(f"  {r['step_seconds']:.3f} s/step, {r['slices_per_s']:.1f} slices/s, {r['gflops']:.1f} GFLOP/s")
            runs[(width, variant)] = r
        return runs[(width, variant)]

    for v in variants:
        run(a.base_width, v)
    best_variant = max(variants, key=lambda v: runs[(a.base_width, v)]["slices_per_s"])
    sweep_variants = [BASELINE] + ([best_variant] if best_variant != BASELINE else [])
    for v in sweep_variants:
        for w in widths if a.encoder == "slice_cnn" else []:  # EfficientNet-Lite0 has one width
            run(w, v)

    log("matmul peak between the training runs and the data pipeline ...")
    peaks_mid = peaks()

    # real input pipeline, fed into the fastest variant at the default width
    log("data pipeline: synthetic cohort -> read_volume -> prepare_volume -> DataLoader ...")
    augment, aug_name = _augment_fn()
    loader_results = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as td:
        if q:
            volumes, labels, cohort = build_cohort(Path(td), 2, 64, 6, size, log)
        else:
            volumes, labels, cohort = build_cohort(Path(td), 8, 512, 24, size, log)
    ds = SliceSamples(volumes, labels, augment)
    loader_trainer = Trainer(a.base_width, best_variant, precisions[best_variant], encoder=a.encoder)
    # the peer: the same step on batches of the same pipeline, drawn and collated beforehand (zero stall)
    pre_loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, drop_last=True, num_workers=0,
        sampler=torch.utils.data.RandomSampler(ds, replacement=True, num_samples=batch * (warmup + loader_steps),
                                               generator=torch.Generator().manual_seed(99)))
    pre_batches = list(pre_loader)
    pre = []
    for k, (xb, yb) in enumerate(pre_batches):
        t0 = time.perf_counter()
        loader_trainer.step(xb, yb)
        if k >= warmup:
            pre.append(time.perf_counter() - t0)
    del pre_batches
    pre_median = statistics.median(pre)
    for wk in workers_list:
        log(f"  DataLoader num_workers={wk} ...")
        r = time_loader(loader_trainer, ds, wk, batch, max(warmup, 1), loader_steps)
        log(f"    stall {r['stall_fraction']:.3f}, {r['median_step_seconds']:.3f} s/step "
            f"(pre-batched {pre_median:.3f} s/step)")
        loader_results.append(r)

    log("matmul peak again ...")
    peaks_after = peaks()
    peak = {k: max(p[k]["gflops"] for p in (peaks_before, peaks_mid, peaks_after)) for k in peaks_before}
    log(f"  {peak_line(peaks_after)}; peak used: " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()))

    # ---- rows
    rows: list[dict] = []
    for (w, v), r in runs.items():
        base = runs.get((w, BASELINE))
        prec, cl = r["precision"], VARIANTS[v][1]
        case = f"{net(w)} {v}"
        common = {"case": case, "variant": v, "base_width": w, "precision": prec,
                  "precision_note": r["precision_note"], "dtype": "bf16 autocast" if prec == "bf16" else "fp32",
                  "memory_format": "channels_last" if cl else "contiguous", "batch": batch, "size": size,
                  "step_seconds_median": r["step_seconds"], "step_seconds": r["times"], "steps": steps,
                  "warmup": warmup, "flops_per_step": r["flops_per_step"], "n_params": r["n_params"],
                  "model_source": r["model_source"], "loss_finite": r["loss_finite"]}
        rows.append({**common, "metric": "train_slices_per_s", "unit": "slices/s", "ichdet": r["slices_per_s"],
                     "peer": f"{net(w)} {BASELINE} (contiguous NCHW)",
                     "peer_value": base["slices_per_s"] if base else None,
                     "ratio": ratio(r["slices_per_s"], base["slices_per_s"] if base else None),
                     "goal": "higher is faster; ratio = speed-up over fp32 contiguous at the same width",
                     "goal_met": None})
        peak_keys = ["bf16", "fp32"] if prec == "bf16" else ["fp32"]  # the row's own precision first
        for k in peak_keys:
            frac = r["gflops"] / peak[k]
            sizes = bf16_sizes if k == "bf16" else mm_sizes
            rows.append({**common, "metric": "train_gflops", "unit": "GFLOP/s", "ichdet": r["gflops"],
                         "peer": f"torch.mm {k} peak (n={sizes})", "peer_value": peak[k], "ratio": frac,
                         "fraction_of_peak": frac, "peak_dtype": k,
                         "goal": f"ratio >= {PEAK_GOAL} (fraction of the measured {k} matmul peak)"
                                 + ("; not judged: bf16 is emulated here, so its peak is no hardware figure"
                                    if k == "bf16" and plan.emulated else ""),
                         "goal_met": bool(frac >= PEAK_GOAL) if k == peak_keys[0] and not (k == "bf16" and plan.emulated)
                         else None})
    for r in loader_results:
        case = f"{net(a.base_width)} {best_variant} + DataLoader(num_workers={r['workers']})"
        common = {"case": case, "variant": best_variant, "base_width": a.base_width, "loader_workers": r["workers"],
                  "precision": loader_trainer.precision.dtype,
                  "batch": batch, "size": size, "augmentation": aug_name,
                  "steps": loader_steps,
                  "wait_seconds": r["wait_seconds"], "step_seconds": r["step_seconds"], "pre_batched_step_seconds": pre}
        rows.append({**common, "metric": "data_stall_fraction", "unit": "wait / total step time",
                     "ichdet": r["stall_fraction"], "peer": "zero-stall (pre-batched tensors)", "peer_value": 0.0,
                     "ratio": None, "goal": f"ichdet < {STALL_GOAL}", "goal_met": bool(r["stall_fraction"] < STALL_GOAL)})
        rows.append({**common, "metric": "loader_step_seconds", "unit": "s (median, wait + compute)",
                     "ichdet": r["median_step_seconds"], "peer": "same step on pre-batched tensors (same pipeline, collated beforehand)",
                     "peer_value": pre_median, "ratio": ratio(r["median_step_seconds"], pre_median),
                     "goal": "ratio close to 1 (the pipeline adds little to the step)", "goal_met": None})

    fastest = max(runs.values(), key=lambda r: r["slices_per_s"])
    try:
        load_end = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load_end = None
    machine["load_average_end"] = load_end
    out = {"benchmark": "bench_train", "machine": machine,
           "settings": {"quick": q, "batch": batch, "size": size, "in_channels": 1, "warmup": warmup, "steps": steps,
                        "base_width": a.base_width, "widths": widths, "variants": variants,
                        "variants_asked": asked_variants, "precision": plan.to_dict(),
                        "width_sweep_variants": sweep_variants, "loader_steps": loader_steps, "optimizer": f"Adam(lr={LR})",
                        "loss": "cross_entropy", "threads": torch.get_num_threads(),
                        "matmul_sizes": list(mm_sizes), "matmul_repeats": mm_repeats,
                        "timing": "median wall seconds of the timed steps after the warm-up steps",
                        "flops": runs[(a.base_width, BASELINE)]["flop_method"],
                        "count_flops_crosscheck": {f"w{w} {v}": r["count_flops_crosscheck"] for (w, v), r in runs.items()},
                        "model_source": runs[(a.base_width, BASELINE)]["model_source"],
                        "augmentation": aug_name, "cohort": cohort},
           "peaks": {"fp32_gflops": peak["fp32"], "bf16_gflops": peak.get("bf16"), "before": peaks_before,
                     "middle": peaks_mid, "after": peaks_after, "matmul_sizes": {"fp32": list(mm_sizes),
                                                                                  "bf16": list(bf16_sizes) or None},
                     "bf16_emulated": plan.emulated if plan.run_bf16 else None,
                     "method": f"best of >= {mm_repeats} calls and >= {mm_times[1]:g} s per size after {mm_times[0]:g} s "
                               "warm-up; the peak is the highest of the three measurements (before, between, after "
                               "the training runs); bf16 only when a bf16 variant runs (null otherwise), at sizes "
                               f"capped at {EMULATED_BF16_MAX_N} where bf16 is emulated"},
           "summary": {"fastest_variant_at_base_width": best_variant,
                       "fastest_overall": {"base_width": fastest["base_width"], "variant": fastest["variant"],
                                           "slices_per_s": fastest["slices_per_s"]},
                       "fraction_of_fp32_peak": {f"w{w} {v}": r["gflops"] / peak["fp32"] for (w, v), r in runs.items()},
                       "fraction_of_bf16_peak": {f"w{w} {v}": r["gflops"] / peak["bf16"] for (w, v), r in runs.items()
                                                 if r["precision"] == "bf16"},
                       "precision": {f"w{w} {v}": r["precision"] for (w, v), r in runs.items()},
                       "stall_fraction": {str(r["workers"]): r["stall_fraction"] for r in loader_results}},
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - t_start, 1),
           "skipped": plan.skipped, "results": rows}
    write_json_atomic(a.out, out)
    print_table(rows)
    print(f"matmul peak: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items())
          + f"; fastest at w{a.base_width}: {best_variant}; fastest overall: w{fastest['base_width']} {fastest['variant']} "
          f"{fastest['slices_per_s']:.1f} slices/s")
    print(f"precision: {plan.note}")
    for sk in plan.skipped:
        print(f"skipped {sk['case']}: {sk['reason']}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
