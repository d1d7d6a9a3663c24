"""The four stages `ichdet train` runs, each ending with a bundle in RUN/bundle:

slice      a slice classifier (slice_cnn, alexnet, efficientnet_lite0) on balanced cranial slices
scan       scan_lstm on whole scans (frozen encoder = the paper's stage 2, else end-to-end)
svm        an SVM head on slice features: "alexnet_svm" (per slice, on a trained slice model), "slice_svm"
           (per slice, on a trained model or a frozen pretrained `model.backbone`) or
           "feature_svm" (zero-padded per-slice features of a whole scan, sec. 4.1)
aggregate  a trained slice model + maximum or 95th percentile of slice probabilities (sec. 4.1)

Every operating point is chosen on the validation split (highest threshold reaching
`target_sensitivity`) and stored in the bundle to be applied unchanged to test data.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ichdet.engine.bundle import save_bundle
from ichdet.engine.calibration import calibrate_last_layer
from ichdet.datasets.slices import SliceDataset, SliceIndex, validation_sample
from ichdet.engine.config import dump_config
from ichdet.engine.loop import fit
from ichdet.engine.run import Run
from ichdet.engine.scoring import sample_features, score_scans, score_slices, slice_features
from ichdet.engine.tasks import ScanTask, SliceTask
from ichdet.errors import InputError
from ichdet.metrics import operating_point as choose_operating_point
from ichdet.metrics import SUBTYPE_LABELS, roc_auc, subtype_aucs
from ichdet.models import create_model, list_models, model_class
from ichdet.models.aggregate import FeatureSVM
from ichdet.models.finetune import set_trainable
from ichdet.models.heads import head_of
from ichdet.models.kinds import KINDS
from ichdet.models.svm_head import SVMHead


def operating_point(y: np.ndarray, scores: np.ndarray, target: float, level: str) -> dict[str, Any]:
    """Maximal-sensitivity point chosen on validation scores, with the validation figures at it."""
    stats = choose_operating_point(y, scores, "max_sensitivity", target)
    method = stats.pop("method")
    return {"method": method, "target_sensitivity": target, "threshold": stats["threshold"], "chosen_on": "validation",
            "level": level, "validation": {"auc": roc_auc(y, scores), **stats}}


def label_kwargs(labels: str) -> dict[str, Any]:
    """Model keyword arguments of a label mode: a two-class softmax head, or six sigmoid outputs
    (five subtypes, then "any")."""
    return {"num_classes": len(SUBTYPE_LABELS), "multilabel": True} if labels == "subtypes" else {}


def label_mode(model: torch.nn.Module) -> str:
    """The `model.labels` value a network was built for: "subtypes" (multi-label head) or "binary"."""
    return "subtypes" if head_of(model).multilabel else "binary"


def init_prior_bias(model: torch.nn.Module, prevalence: np.ndarray) -> None:
    """Set a fresh multi-label head's biases to the logits of the labels' training prevalence, so
    training starts at the prior instead of 0.5 for every label (Lin et al. 2017's prior
    initialisation). On the synthetic 2D images this halved the epochs the subtype CNN spent on
    its initial plateau."""
    head = model.get_submodule(model.last_layer)
    p = np.clip(np.asarray(prevalence, dtype=np.float64), 1e-3, 1 - 1e-3)
    with torch.no_grad():
        head.bias.copy_(torch.as_tensor(np.log(p / (1 - p)), dtype=head.bias.dtype))


def load_pretrained(model: torch.nn.Module, weights: str) -> None:
    """Start `model` from pretrained weights ("imagenet" or a file) when its class can load them."""
    if not hasattr(model, "load_pretrained"):
        pretrained = sorted(n for n in list_models() if hasattr(model_class(n), "load_pretrained"))
        raise InputError(f"model.weights (pretrained ImageNet weights) applies to {' and '.join(pretrained)}, "
                         f"not {model.model_name}")
    model.load_pretrained(weights)


def load_encoder(model: torch.nn.Module, source: torch.nn.Module) -> None:
    """Copy every weight of `source` but its last layer into `model` (the same network with another
    head: binary <-> subtypes); `model`'s last layer keeps its fresh weights."""
    head = f"{model.last_layer}."
    mine = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
    theirs = {k: v for k, v in source.state_dict().items() if not k.startswith(head)}
    differ = [k for k in sorted(mine.keys() | theirs.keys()) if k not in mine or k not in theirs
              or mine[k].shape != theirs[k].shape]
    if differ:
        raise InputError(f"model.init_from's network does not match this one outside its last layer: "
                         f"{', '.join(differ[:4])}")
    model.load_state_dict(theirs, strict=False)


def build_model(run: Run, prevalence: np.ndarray | None = None) -> torch.nn.Module:
    """The network a slice or scan stage trains, initialised as the config says. `prevalence`
    (L,): the labels' frequency in training batches; a multi-label head that starts fresh (not
    from an init_from model of the same kind) gets it as its prior (`init_prior_bias`)."""
    cfg, src = run.cfg, run.source
    name, kw = cfg.model.name, {**cfg.model.kwargs, **label_kwargs(cfg.model.labels)}
    in_ch = len(run.spec.windows) * (2 * run.context + 1)
    torch.manual_seed(cfg.seed)
    relabel = False  # a slice model of the other label mode: its encoder starts this one, with a new head
    if src is not None and src.meta["model"]["name"] == name:
        was = label_mode(src.model)
        relabel = was != cfg.model.labels
        if relabel and name == "scan_lstm":
            raise InputError(f"model.init_from holds a {name} with {was} labels, but this config trains "
                             f"model.labels {cfg.model.labels}", src.path)
    if name == "scan_lstm":
        if src is not None and src.meta["model"]["name"] == "scan_lstm":
            model = create_model("scan_lstm", **{**src.meta["model"]["kwargs"], **kw})
            model.load_state_dict(src.model.state_dict())
        elif src is not None:  # a slice model: its weights start the encoder (the paper's stage 2)
            model = create_model("scan_lstm", encoder_name=src.meta["model"]["name"],
                                 encoder_kw=src.meta["model"]["kwargs"], **kw)
            model.encoder.load_state_dict(src.model.state_dict())
        else:
            enc_kw = {"in_channels": in_ch, **kw.pop("encoder_kw", {})}
            model = create_model("scan_lstm", encoder_kw=enc_kw, **kw)
        model.freeze_encoder(cfg.model.freeze_encoder)
    else:
        kw.setdefault("in_channels", in_ch if name == "slice_cnn" else 3)
        model = create_model(name, **kw)
        if src is not None:
            if src.meta["model"]["name"] != name:
                raise InputError(f"model.init_from holds a {src.meta['model']['name']} model, not {name}", src.path)
            if relabel:
                load_encoder(model, src.model)
            else:
                model.load_state_dict(src.model.state_dict())
        if cfg.model.weights:
            load_pretrained(model, cfg.model.weights)
        set_trainable(model, cfg.model.trainable)
    fresh_head = src is None or src.meta["model"]["name"] != name or relabel
    if prevalence is not None and cfg.model.labels == "subtypes" and fresh_head:
        init_prior_bias(model, prevalence)
    want = model.in_channels
    if want != in_ch and not (want == 3 and in_ch == 1):
        raise InputError(f"the model takes {want} input channel(s) but the data give {in_ch} "
                         f"({len(run.spec.windows)} window(s) x {2 * run.context + 1} slice(s))")
    if cfg.channels_last and name != "scan_lstm":
        model = model.to(memory_format=torch.channels_last)
    return model


def _model_kwargs(model: torch.nn.Module) -> dict[str, Any]:
    return model.config()


def _save(run: Run, model: torch.nn.Module, kind: str, op: dict[str, Any], metrics: dict[str, Any],
          svm: Any = None, extra: dict[str, Any] | None = None) -> Path:
    out = run.out / "bundle"
    if run.info.is_main:
        save_bundle(out, model=model, model_name=model.model_name, model_kwargs=_model_kwargs(model), kind=kind,
                    prep=run.spec, context=run.context, operating_point=op, metrics=metrics,
                    config_yaml=dump_config(run.cfg), data_hash=run.data_hash, aggregate=run.cfg.aggregate,
                    svm=svm, extra={"experiment": run.cfg.experiment, "description": run.cfg.description, **(extra or {})}, splits=run.splits,
                    slice_thickness_mm=run.cohort.slice_thickness_mm(run.ids("train")),  # predict's slab thickness
                    training_units=run.cohort.training_units(run.ids("train")))  # a CT as the images were
        run.log(f"bundle: {out} (validation AUC {op['validation']['auc']:.4f}, threshold {op['threshold']:.4g} "
                f"for sensitivity >= {op['target_sensitivity']})")
    return out


def _scan_scores(run: Run, kind: str, model: torch.nn.Module, svm: Any = None
                 ) -> tuple[np.ndarray, np.ndarray, float, dict[str, Any]]:
    """Validation scans -> (labels, scores, seconds per scan, {"validation_subtypes": per-label AUCs}
    for a multi-label model, else {})."""
    ids = run.ids("val")
    t0 = time.perf_counter()
    scores, label_probs = score_scans(kind, model, run.cohort, ids, run.context, run.cfg.aggregate, svm)
    sec = (time.perf_counter() - t0) / max(len(ids), 1)
    extra = {} if label_probs is None else {
        "validation_subtypes": subtype_aucs(run.cohort.label_targets(ids), label_probs)}
    return run.cohort.labels(ids), scores, sec, extra


def _history(state) -> dict[str, Any]:
    return {"best_epoch": state.best_epoch, "epochs_run": state.epoch,
            "best_metric": state.best_metric}


def train_slices(run: Run, resume: bool) -> Path:
    task = SliceTask(run)
    model = build_model(run, task.label_prevalence())
    state = fit(run, model, task, resume)
    samples = task.validation_samples()
    s = score_slices(model, samples)
    calibration = None
    if run.cfg.calibrate:  # on the validation samples the best epoch was chosen on; ranking kept
        calibration = calibrate_last_layer(model, s.y, s.probability)
        run.log(f"calibration: {calibration}")
        s = score_slices(model, samples)
    slice_op = operating_point(s.y, s.probability, run.cfg.target_sensitivity, "slice")
    ys, ss, sec, sub = _scan_scores(run, "slice", model)
    scan_op = operating_point(ys, ss, run.cfg.target_sensitivity, "scan")
    metrics = {**_history(state), "select_metric": run.cfg.optim.select_metric, "seconds_per_scan": sec,
               "validation_slices": slice_op["validation"], "validation_scans": scan_op["validation"], **sub}
    extra = {"slice_operating_point": slice_op, **({"calibration": calibration} if calibration else {})}
    return _save(run, model, "slice", scan_op, metrics, extra=extra)


def train_scans(run: Run, resume: bool) -> Path:
    task = ScanTask(run)
    model = build_model(run, task.label_prevalence())
    state = fit(run, model, task, resume)
    ys, ss, sec, sub = _scan_scores(run, "scan", model)
    op = operating_point(ys, ss, run.cfg.target_sensitivity, "scan")
    metrics = {**_history(state), "select_metric": run.cfg.optim.select_metric, "seconds_per_scan": sec,
               "validation_scans": op["validation"], **sub}
    return _save(run, model, "scan", op, metrics)


def frozen_backbone(run: Run) -> torch.nn.Module:
    """The svm stage's network when there is no init_from: `model.backbone`, never trained on CT,
    with its pretrained `model.weights` (ImageNet features), or random weights without them."""
    m = run.cfg.model
    model = create_model(m.backbone, **{"in_channels": 3, **m.kwargs})
    if m.weights:
        load_pretrained(model, m.weights)
    return model


def carry_svm(model: torch.nn.Module, svm: SVMHead) -> None:
    """Write a linear SVM into a two-class network's last layer: logits (0, w.f + b), so its softmax
    P(bleed) is the SVM's probability and Grad-CAM explains the SVM's decision."""
    w, b = svm.linear_logit()
    layer = model.get_submodule(model.last_layer)
    if tuple(layer.weight.shape) != (2, len(w)):
        raise InputError(f"cannot carry an SVM on {len(w)} features in a layer of shape {tuple(layer.weight.shape)}")
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
        layer.weight[1] = torch.as_tensor(w, dtype=layer.weight.dtype)
        layer.bias[1] = b


def fit_svm(run: Run, resume: bool) -> Path:
    """An SVM head on the init_from slice model's features; C by inner CV on training data only."""
    cfg, s = run.cfg, run.cfg.svm
    kind = cfg.model.name
    svm_kinds = [k.name for k in KINDS.values() if k.svm is not None]
    if kind not in svm_kinds:
        raise InputError(f"the svm stage makes model.name {' or '.join(svm_kinds)}, got {cfg.model.name!r}")
    model = (run.source.model if run.source is not None else frozen_backbone(run)).eval()
    C = s.C if s.C > 0 else None
    if KINDS[kind].svm is SVMHead:  # slice features -> the SVM's slice probability
        kw = {"cranial_only": cfg.data.cranial_only, "negatives_from_negative_scans": cfg.data.negatives_from_negative_scans}
        index = SliceIndex.build(run.cohort, splits=run.splits, split="train", **kw)
        ds = SliceDataset(run.cohort, index, context=run.context)
        items = validation_sample(index, s.max_train_samples, cfg.seed)  # balanced, without replacement
        run.log(f"svm: features of {len(items)} training slices")
        feats, labels = sample_features(model, [ds[i] for i in items])
        svm = SVMHead(kernel=s.kernel, C=C, Cs=tuple(s.Cs), inner_folds=s.inner_folds, random_state=cfg.seed)
        svm.fit(feats, labels)
        if run.source is None and s.kernel == "linear":  # the frozen backbone's unused head becomes the SVM
            carry_svm(model, svm)
        val_index = SliceIndex.build(run.cohort, splits=run.splits, split="val", **kw)
        vds = SliceDataset(run.cohort, val_index, context=run.context)
        v = score_slices(model, [vds[i] for i in validation_sample(val_index, cfg.optim.val_samples, cfg.seed)], svm=svm)
        extra = {"slice_operating_point": operating_point(v.y, v.probability, cfg.target_sensitivity, "slice")}
    else:  # FeatureSVM: a scan's padded slice features -> the SVM's scan probability
        ids = run.ids("train")
        run.log(f"svm: slice features of {len(ids)} training scans")
        feats = [slice_features(model, run.cohort[sid].image, run.context) for sid in ids]
        svm = FeatureSVM(length=s.length or None, C=C, Cs=tuple(s.Cs), inner_folds=s.inner_folds, random_state=cfg.seed)
        svm.fit(feats, run.cohort.labels(ids))
        extra = {}
    ys, ss, sec, _ = _scan_scores(run, kind, model, svm)
    op = operating_point(ys, ss, cfg.target_sensitivity, "scan")
    metrics = {"C": float(svm.C_), "seconds_per_scan": sec, "validation_scans": op["validation"],
               **({"validation_slices": extra["slice_operating_point"]["validation"]} if extra else {})}
    return _save(run, model, kind, op, metrics, svm=svm, extra=extra)


def fit_aggregate(run: Run, resume: bool) -> Path:
    """The slice model's maximum or 95th-percentile slice probability as the scan score (and, for
    a multi-label model, each subtype's)."""
    model = run.source.model.eval()
    has = label_mode(model)
    if has != run.cfg.model.labels:
        raise InputError(f"model.init_from holds a slice model with {has} labels, but this config says "
                         f"model.labels {run.cfg.model.labels}", run.source.path)
    ys, ss, sec, sub = _scan_scores(run, "aggregate", model)
    op = operating_point(ys, ss, run.cfg.target_sensitivity, "scan")
    return _save(run, model, "aggregate", op, {"seconds_per_scan": sec, "validation_scans": op["validation"], **sub})


STAGE_FUNCTIONS = {"slice": train_slices, "scan": train_scans, "svm": fit_svm, "aggregate": fit_aggregate}
