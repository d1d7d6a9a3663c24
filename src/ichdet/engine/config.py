"""Typed training configuration: dataclasses loaded from YAML, overridden from the command line.

A config file may name a ``base:`` file (relative to itself) whose values it overrides, so the
quick variants and the stage configs stay a few lines each. ``--set key.sub=value`` overrides
(values parsed as YAML: ``--set optim.lr=1e-3``, ``--set data.windows=[brain,subdural]``).
The resolved config is saved beside every run (``config.yaml``) and inside every bundle.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ichdet.datasets.manifest import LABEL_MODES
from ichdet.engine.precision import PRECISIONS
from ichdet.errors import InputError
from ichdet.preprocess.pipeline import PrepSpec

STAGES = ("slice", "scan", "svm", "aggregate", "seg")
OPTIMIZERS = ("adam", "rmsprop", "sgd")
SELECT_METRICS = ("accuracy", "auc", "loss", "dice")  # dice: the seg stage's val_dice
SCHEDULES = ("constant", "cosine")
LOSSES = ("auto", "cross_entropy", "rsna", "bce", "dice_ce")  # dice_ce: the seg stage's


@dataclass
class DataConfig:
    """Where the scans are and how they become network input."""

    manifest: str = ""  # manifest CSV (relative paths: to the working directory)
    slice_labels: str = "auto"  # "auto": slice_labels.csv beside the manifest when present; "" none
    val_fraction: float = 0.15  # of patients, stratified; ignored when the manifest has a split column
    test_fraction: float = 0.15  # held out for `ichdet evaluate`; never used in training or selection
    split_seed: int = 0
    cache: str = ""  # prepared-array cache folder; "" = $ICHDET_CACHE or ~/.cache/ichdet
    windows: list[str] = field(default_factory=lambda: ["brain"])
    size: int = 256  # px, after the 2x2 maximum filter of a 512 slice
    max_filter: int = 2
    z_max_filter: bool = False  # the 2x2x2 filter of the scan stages
    crop_head: bool = False
    context: int = 0  # neighbouring slices on each side stacked as channels (RSNA 2019 winners)
    cranial_only: bool = True  # slice stage: only slices showing the cranial cavity
    negatives_from_negative_scans: bool = True  # slice stage: never a negative slice of a positive scan
    seg_sampling: str = "label"  # seg stage, the bleed half of an epoch: "label" (each label an equal share) | "slice"
    augment: bool = True
    workers: int = 0  # DataLoader worker processes

    def prep_spec(self) -> PrepSpec:
        return PrepSpec(windows=tuple(self.windows), size=self.size, max_filter=self.max_filter,
                        z_max_filter=self.z_max_filter, crop_head=self.crop_head)


@dataclass
class ModelConfig:
    name: str = "slice_cnn"  # a name from ichdet.models.list_models()
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to create_model
    init_from: str = ""  # a run folder or bundle whose weights start this one (relative: to the run's parent)
    weights: str = ""  # alexnet, efficientnet_lite0: "imagenet" or a local file of the official state dict
    backbone: str = ""  # svm stage without init_from: this network, frozen (from `weights`, else random), gives the features
    freeze_encoder: bool = False  # scan_lstm: the paper's second stage
    trainable: str = "all"  # "all", "classifier", "last": which layers train (fine-tuning)
    lr_mult: dict[str, float] = field(default_factory=dict)  # parameter-name prefix -> learning-rate factor
    labels: str = "binary"  # "binary": bleed / none (two-class softmax); "subtypes": 5 subtypes + "any" (sigmoids)


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    batch_size: int = 25  # global batch, split over processes
    epochs: int = 20
    # balanced random sampling with replacement: an epoch is a step count; 0 = one pass over the
    # training split, ceil(training scans / batch_size), resolved when the run opens (ichdet.engine.run)
    steps_per_epoch: int = 100
    val_samples: int = 500  # slice stage: the paper's 500 random validation samples
    select_metric: str = "accuracy"  # best-by-validation checkpoint
    patience: int = 0  # epochs without improvement before stopping; 0 = run all epochs
    grad_clip: float = 0.0
    schedule: str = "constant"  # learning rate over the run: constant | cosine (decay to 0 by the last step)
    warmup_epochs: float = 0.0  # linear warm-up from 0 over this many epochs (before the schedule)
    loss: str = "auto"  # auto (cross_entropy for binary labels, rsna for subtypes) | cross_entropy | rsna | bce
    # scan stage with the encoder training (end-to-end) and slice labels: + this x the encoder's own
    # slice-head loss on the batch's labelled slices (the head predict's per-slice probabilities come
    # from); 0 = off, the paper's loss. Frozen encoders and the other stages ignore it.
    slice_loss_weight: float = 0.0

    def resolved_loss(self, label_mode: str) -> str:
        return ("rsna" if label_mode == "subtypes" else "cross_entropy") if self.loss == "auto" else self.loss


@dataclass
class SVMConfig:
    """The SVM heads (AlexNet-SVM, the padded-feature SVM)."""

    kernel: str = "linear"
    C: float = 0.0  # 0: chosen by inner cross-validation on the training data
    Cs: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0])
    inner_folds: int = 3
    max_train_samples: int = 4000  # slice features: a balanced random subset of the training slices
    length: int = 0  # feature_svm: padded slice count; 0 = the longest training scan


@dataclass
class TrainConfig:
    experiment: str = ""
    description: str = ""
    stage: str = "slice"  # slice | scan | svm | aggregate | seg (segmentation from label masks)
    aggregate: str = "max"  # aggregate stage: max | p95
    seed: int = 0
    target_sensitivity: float = 0.98  # operating point: highest threshold reaching it on validation
    # slice stage, binary labels: Platt-scale the network on its validation samples, written into its
    # last layer (ichdet.engine.calibration), so that runs on other data (cv's folds) share one scale
    calibrate: bool = False
    channels_last: bool = True  # benchmarks/bench_train.py: 1.55x fp32 slices/s on CPU
    # autocast of the slice encoder (ichdet.engine.precision): auto = bf16 where the CPU has bf16 units
    # (3.3x fp32 with channels_last on AMX), fp32 elsewhere; on a GPU bf16, else fp16 with a grad scaler.
    # The old switch autocast_bf16: true / false is read as precision bf16 / fp32.
    precision: str = "auto"
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    checkpoint_seconds: float = 60.0  # latest.pt + best.pt at most this often and after the last epoch; 0: every epoch
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    svm: SVMConfig = field(default_factory=SVMConfig)

    def validate(self) -> TrainConfig:
        if self.stage not in STAGES:
            raise InputError(f"config stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.aggregate not in ("max", "p95"):
            raise InputError(f"config aggregate must be max or p95, got {self.aggregate!r}")
        if self.optim.name not in OPTIMIZERS:
            raise InputError(f"config optim.name must be one of {', '.join(OPTIMIZERS)}, got {self.optim.name!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"config precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.model.labels not in LABEL_MODES:
            raise InputError(f"config model.labels must be one of {', '.join(LABEL_MODES)}, got {self.model.labels!r}")
        if self.optim.loss not in LOSSES:
            raise InputError(f"config optim.loss must be one of {', '.join(LOSSES)}, got {self.optim.loss!r}")
        if self.stage == "seg":
            self._validate_seg()
        loss = self.optim.resolved_loss(self.model.labels)
        if self.stage != "seg" and (loss == "cross_entropy") != (self.model.labels == "binary"):
            raise InputError(f"config optim.loss {loss} does not fit model.labels {self.model.labels} "
                             "(binary labels train with cross_entropy; subtypes with rsna or bce)")
        if self.calibrate and (self.stage != "slice" or self.model.labels != "binary"):
            raise InputError(f"config calibrate applies to stage slice with model.labels binary, got stage "
                             f"{self.stage} with {self.model.labels} labels")
        if self.stage == "svm" and self.model.labels != "binary":
            raise InputError("config stage svm fits binary SVM heads; model.labels must be binary")
        if self.optim.schedule not in SCHEDULES:
            raise InputError(f"config optim.schedule must be one of {', '.join(SCHEDULES)}, got {self.optim.schedule!r}")
        if not 0 <= self.optim.warmup_epochs <= self.optim.epochs:
            raise InputError(f"config optim.warmup_epochs must be in [0, optim.epochs], got {self.optim.warmup_epochs}")
        if not self.optim.slice_loss_weight >= 0 or self.optim.slice_loss_weight == float("inf"):
            raise InputError(f"config optim.slice_loss_weight must be a finite number >= 0, "
                             f"got {self.optim.slice_loss_weight}")
        if self.optim.select_metric not in SELECT_METRICS:
            raise InputError(f"config optim.select_metric must be one of {', '.join(SELECT_METRICS)}, "
                             f"got {self.optim.select_metric!r}")
        for key in ("batch_size", "epochs"):
            if getattr(self.optim, key) < 1:
                raise InputError(f"config optim.{key} must be >= 1, got {getattr(self.optim, key)}")
        if self.optim.steps_per_epoch < 0:
            raise InputError(f"config optim.steps_per_epoch must be >= 1, or 0 for one pass over the training "
                             f"split, got {self.optim.steps_per_epoch}")
        if not 0 < self.target_sensitivity <= 1:
            raise InputError(f"config target_sensitivity must be in (0, 1], got {self.target_sensitivity}")
        if self.data.context < 0:
            raise InputError(f"config data.context must be >= 0, got {self.data.context}")
        if self.data.seg_sampling not in ("label", "slice"):
            raise InputError(f"config data.seg_sampling must be label or slice, got {self.data.seg_sampling!r}")
        frozen = self.stage == "svm" and self.model.backbone
        if self.stage in ("svm", "aggregate") and not self.model.init_from and not frozen:
            raise InputError(f"config stage {self.stage!r} needs model.init_from (the trained slice model's run)"
                             + (" or model.backbone (frozen features, pretrained with model.weights)"
                                if self.stage == "svm" else ""))
        self.data.prep_spec()  # validates windows and sizes
        return self

    def _validate_seg(self) -> None:
        """The seg stage: six classes from masks (loss dice_ce), every slice as it is, no context."""
        if self.optim.loss not in ("auto", "dice_ce") or self.model.labels != "binary":
            raise InputError(f"config stage seg trains six classes with optim.loss dice_ce (or auto) and the default "
                             f"model.labels binary, got optim.loss {self.optim.loss}, model.labels {self.model.labels}")
        if self.data.z_max_filter or self.data.context:
            raise InputError(f"config stage seg keeps every slice: data.z_max_filter must be false and data.context 0, "
                             f"got {self.data.z_max_filter} and {self.data.context}")
        if self.optim.select_metric not in ("dice", "loss"):
            raise InputError(f"config stage seg chooses its best epoch by dice or loss, got optim.select_metric "
                             f"{self.optim.select_metric!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise InputError("config files include each other in a loop (base:)", path)
    if not path.is_file():
        raise InputError("config file not found", path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise InputError(f"not valid YAML ({str(e).splitlines()[0]})", path) from None
    if not isinstance(data, dict):
        raise InputError(f"a config must be a mapping of keys, got {type(data).__name__}", path)
    base = data.pop("base", None)
    if base:
        return _merge(_read_yaml(path.parent / str(base), seen + (path,)), data)
    return data


def _set_dotted(tree: dict[str, Any], assignment: str) -> None:
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--set expects key=value (e.g. optim.lr=1e-3), got {assignment!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise InputError(f"--set {key}: {p!r} is not a section")
    node[parts[-1]] = value


LEGACY_KEYS = {"autocast_bf16": ("precision", {True: "bf16", False: "fp32"})}  # old key -> (new key, values)
# keys added with a default that changed behaviour -> (what a config saved before the key existed did,
# the stages it matters to): a run folder's config.yaml from then resumes only with that value in those
# stages, and with any in the others (`engine.run.check_resume`)
ADDED_KEYS = {("data", "seg_sampling"): ("slice", ("seg",)), ("calibrate",): (False, ("slice",))}


def legacy_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level keys of older configs (and the configs inside older bundles) in today's names."""
    out = dict(values)
    for old, (new, mapping) in LEGACY_KEYS.items():
        if old in out:
            value = out.pop(old)
            if not isinstance(value, bool):
                raise InputError(f"config {old} must be true or false, got {value!r} (or use {new}: "
                                 f"{'|'.join(PRECISIONS)})")
            out.setdefault(new, mapping[value])
    return out


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    if cls is TrainConfig:
        values = legacy_keys(values)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InputError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
                         f"expected some of {', '.join(sorted(known))}")
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for name, v in values.items():
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            if not isinstance(v, Mapping):
                raise InputError(f"config {where}{name} must be a section, got {v!r}")
            kwargs[name] = _build(type(default), v, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(v, default, f"{where}{name}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Check a YAML value against the type of its default (ints become floats where floats are due)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise InputError(f"config {key} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, float) and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(default, str) and value is None:
        return ""
    if isinstance(default, str) and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(default, list) and isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(default, list) and isinstance(value, str):
        return [value]
    if isinstance(default, dict) and isinstance(value, Mapping):
        return dict(value)
    raise InputError(f"config {key} must be a {type(default).__name__}, got {value!r}")


EXPERIMENTS = Path(__file__).resolve().parents[1] / "configs"  # the papers' experiments, shipped with ichdet


def experiment_path(name: str | Path) -> Path:
    """A config file, or a config's name without ".yaml": a shipped experiment ("3d_slice_cnn",
    "quick/2d_cnn", "cv/2d_cnn", "demo/quick/3d_lstm2_e2e"; configs/README.md) or else a file
    ("/my/configs/2d_cnn" -> /my/configs/2d_cnn.yaml)."""
    path = Path(name)
    if path.is_file() or path.suffix:
        return path  # a missing file is reported by the reader
    for candidate in (EXPERIMENTS / f"{name}.yaml", path.with_name(f"{path.name}.yaml")):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")))
    raise InputError(f"no config file {str(name)!r}, nor a shipped experiment of that name (known: {known}; "
                     "quick/NAME for the laptop-sized ones, cv/NAME and demo/NAME for what ichdet cv and "
                     "ichdet demo train)")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """YAML file or shipped experiment name (with its ``base:`` chain) + ``key=value`` overrides
    -> a validated TrainConfig."""
    tree = _read_yaml(experiment_path(path)) if path is not None else {}
    for assignment in overrides:
        _set_dotted(tree, assignment)
    return _build(TrainConfig, tree, "").validate()


def config_from_dict(values: Mapping[str, Any]) -> TrainConfig:
    return _build(TrainConfig, values, "").validate()


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
