"""The ``seg`` stage: `seg_unet` trained on label masks, ending with a bundle of kind "segmentation".

The bundle is like every other (weights, resolved config, prep, operating point, training
metrics, version, data hash, splits). Its scan score is the kind's (`ichdet.models.kinds`): the
largest bleed score of a slice, P(any bleed) = 1 - P(background) eroded over a 3 x 3 patch of
prepared pixels (`bleed_slice_scores`), with the operating point chosen on the validation scans
like the other kinds. `slice_thickness_mm` is null so that `Bundle.input_prep` never merges a
thinner series into slabs (a mask is measured on the original slices); the training scans'
thickness is kept as ``training_slice_thickness_mm``.
"""
from __future__ import annotations

from pathlib import Path

from ichdet.engine.bundle import save_bundle
from ichdet.engine.config import dump_config
from ichdet.engine.loop import fit
from ichdet.engine.run import Run
from ichdet.engine.seg_task import SegTask
from ichdet.engine.stages import _history, build_model, operating_point
from ichdet.preprocess.masks import check_seg_spec

KIND = "segmentation"


def train_segmentation(run: Run, resume: bool) -> Path:
    """Train the seg stage of `run`; returns the bundle folder."""
    check_seg_spec(run.spec)
    task = SegTask(run)
    model = build_model(run)
    state = fit(run, model, task, resume)
    ev = task.evaluate(model)
    op = operating_point(ev.labels, ev.scores, run.cfg.target_sensitivity, "scan")
    summary = ev.row()
    metrics = {**_history(state), "select_metric": run.cfg.optim.select_metric, "seconds_per_scan": ev.seconds_per_scan,
               "validation_scans": op["validation"],
               "validation_segmentation": {"dice_mean": summary["val_dice"], "class_dice_mean": summary["val_class_dice"],
                                           "n_scans_with_bleed": len(ev.dice), "loss": summary["val_loss"],
                                           "dice": ev.dice}}
    out = run.out / "bundle"
    if run.info.is_main:
        save_bundle(out, model=model, model_name=model.model_name, model_kwargs=model.config(), kind=KIND,
                    prep=run.spec, context=0, operating_point=op, metrics=metrics, config_yaml=dump_config(run.cfg),
                    data_hash=run.data_hash, splits=run.splits, slice_thickness_mm=None,
                    extra={"experiment": run.cfg.experiment, "description": run.cfg.description,
                           "training_slice_thickness_mm": run.cohort.slice_thickness_mm(run.ids("train"))})
        run.log(f"bundle: {out} (validation Dice {summary['val_dice']:.4f}, AUC {op['validation']['auc']:.4f}, "
                f"threshold {op['threshold']:.4g} for sensitivity >= {op['target_sensitivity']})")
    return out


__all__ = ["KIND", "train_segmentation"]
