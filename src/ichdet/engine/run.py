"""What every training stage shares: the run folder, the data, the split and the starting weights.

Run folder layout (`ichdet train CONFIG --out RUN`):
```
RUN/config.yaml   resolved config        RUN/splits.csv   scan_id -> train | val | test
RUN/metrics.csv   one row per epoch      RUN/latest.pt    resume point   RUN/best.pt  best weights
RUN/bundle/       the model bundle (ichdet.engine.bundle)
```
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ichdet.engine.bundle import Bundle, load_bundle
from ichdet.datasets.cache import PreparedCache
from ichdet.datasets.manifest import read_manifest
from ichdet.datasets.prepared import PreparedCohort
from ichdet.datasets.splits import split_by_patient, write_splits
from ichdet.engine.checkpoint import LATEST
from ichdet.engine.config import ADDED_KEYS, TrainConfig, dump_config, legacy_keys
from ichdet.engine.distributed import DistInfo, barrier
from ichdet.errors import InputError
from ichdet.fileio import write_text_atomic
from ichdet.preprocess.pipeline import PrepSpec

# differences that do not change what is trained, so a resumed run may use other values (precision:
# a run started on a CPU with bf16 units may finish on one without)
RESUME_FREE_KEYS = {("data", "workers"), ("threads",), ("data", "cache"), ("precision",), ("checkpoint_seconds",)}


@dataclass
class Run:
    cfg: TrainConfig
    out: Path
    info: DistInfo
    spec: PrepSpec
    context: int
    cohort: PreparedCohort
    splits: dict[str, str]
    data_hash: str
    source: Bundle | None  # the bundle `model.init_from` names
    show_progress: bool = True

    def log(self, message: str) -> None:
        if self.info.is_main:
            print(message, file=sys.stderr, flush=True)

    def ids(self, split: str) -> list[str]:
        return self.cohort.scan_ids(split, self.splits)


def _flatten(d: dict, prefix: tuple = ()) -> dict[tuple, object]:
    out: dict[tuple, object] = {}
    for k, v in d.items():
        out.update(_flatten(v, prefix + (k,)) if isinstance(v, dict) and k != "kwargs" else {prefix + (k,): v})
    return out


def check_resume(cfg: TrainConfig, out: Path) -> None:
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        raise InputError("cannot resume: the run folder has a checkpoint but no config.yaml", out)
    saved, now = _flatten(legacy_keys(yaml.safe_load(saved_path.read_text()) or {})), _flatten(cfg.to_dict())
    for key, (before, stages) in ADDED_KEYS.items():  # a key the run's config predates: what it did without it
        if key not in saved:
            saved[key] = before if now.get(("stage",)) in stages else now.get(key)
    changed = sorted(".".join(k) for k in set(saved) | set(now)
                     if saved.get(k) != now.get(k) and k not in RESUME_FREE_KEYS)
    if changed:
        raise InputError(f"cannot resume with a different config; changed: {', '.join(changed)}", saved_path)


def resolve_paths(cfg: TrainConfig) -> TrainConfig:
    """Make the data paths absolute (in place), so the saved config works from anywhere."""
    if not cfg.data.manifest:
        raise InputError("no data: set data.manifest in the config or pass --data MANIFEST")
    cfg.data.manifest = str(Path(cfg.data.manifest).expanduser().resolve())
    if cfg.data.cache:
        cfg.data.cache = str(Path(cfg.data.cache).expanduser().resolve())
    return cfg


def resolve_steps_per_epoch(cfg: TrainConfig) -> TrainConfig:
    """``optim.steps_per_epoch: 0`` -> one pass over the training split: ceil(training scans /
    batch_size) (in place, so the saved config says what ran; `ichdet cv` trains its image
    models so). Needs the data paths resolved (`resolve_paths`)."""
    if cfg.optim.steps_per_epoch == 0:
        d = cfg.data
        splits = split_by_patient(read_manifest(d.manifest), d.val_fraction, d.test_fraction, d.split_seed)
        n_train = sum(1 for s in splits.values() if s == "train")
        cfg.optim.steps_per_epoch = max(1, math.ceil(n_train / cfg.optim.batch_size))
    return cfg


def resolve_source(init_from: str, out: Path) -> Bundle:
    """`init_from` (relative paths: to the run folder's parent) -> the bundle of that run."""
    path = Path(init_from)
    path = path if path.is_absolute() else out.parent / path
    for candidate in (path / "bundle", path):
        if (candidate / "bundle.json").is_file():
            return load_bundle(candidate)
    raise InputError("model.init_from names no finished run or bundle (train that stage first)", path)


def data_hash(cohort: PreparedCohort, splits: dict[str, str]) -> str:
    """sha256 over the manifest, the slice labels and the split: what the model was trained on."""
    h = hashlib.sha256(cohort.manifest_path.read_bytes())
    labels = cohort.root / "slice_labels.csv"
    if cohort.slice_labels and labels.is_file():
        h.update(labels.read_bytes())
    h.update(json.dumps(sorted(splits.items())).encode())
    return h.hexdigest()


def open_run(cfg: TrainConfig, out: Path, resume: bool, info: DistInfo, show_progress: bool = True) -> Run:
    """Check the run folder, save the config, load the starting bundle, the cohort and the split,
    and prepare (cache) the training and validation scans."""
    resolve_steps_per_epoch(resolve_paths(cfg))
    if (out / LATEST).exists() and not resume:
        raise InputError("run folder already holds a checkpoint; pass --resume to continue it or choose another --out", out)
    if resume and (out / LATEST).exists():
        check_resume(cfg, out)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.yaml", dump_config(cfg))
    source = resolve_source(cfg.model.init_from, out) if cfg.model.init_from else None
    spec, context = cfg.data.prep_spec(), cfg.data.context
    if cfg.stage in ("svm", "aggregate") and source is not None:
        spec, context = source.prep, source.context  # the heads see exactly what the slice model saw
    elif source is not None:
        src = source.prep
        if (tuple(src.windows), src.size, src.crop_head, source.context) != (spec.windows, spec.size, spec.crop_head, context):
            raise InputError(f"data config differs from the init_from model's: windows {list(src.windows)}, size {src.size}, "
                             f"crop_head {src.crop_head}, context {source.context} there vs windows {list(spec.windows)}, "
                             f"size {spec.size}, crop_head {spec.crop_head}, context {context} here", source.path)
    labels = {"auto": "auto", "": None}.get(cfg.data.slice_labels, cfg.data.slice_labels)
    cache = PreparedCache(cfg.data.cache or None)
    cohort = PreparedCohort(Path(cfg.data.manifest), spec, cache=cache, slice_labels_path=labels)
    splits = split_by_patient(cohort.rows, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed)
    run = Run(cfg=cfg, out=out, info=info, spec=spec, context=context, cohort=cohort, splits=splits,
              data_hash=data_hash(cohort, splits), source=source, show_progress=show_progress)
    if info.is_main:
        write_splits(out / "splits.csv", splits)
    _prepare(run)
    return run


def _prepare(run: Run) -> None:
    """Decode and preprocess the training and validation scans once (rank 0 first, into the cache)."""
    from tqdm import tqdm

    ids = run.ids("train") + run.ids("val")
    if run.info.is_main:
        with tqdm(total=len(ids), desc="prepare", unit="scan", disable=None if run.show_progress else True) as bar:
            run.cohort.progress = lambda done, total, sid: bar.update(done - bar.n)
            run.cohort.prepare_all(workers=max(1, run.cfg.data.workers), scan_ids=ids)
            run.cohort.progress = None
    barrier(run.info)
    if not run.info.is_main:
        run.cohort.prepare_all(workers=1, scan_ids=ids)
    torch.manual_seed(run.cfg.seed)
