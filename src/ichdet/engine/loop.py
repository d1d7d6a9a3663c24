"""The training loop, written out: epochs of balanced random batches, validation, best-by-
validation and latest checkpoints, early stopping, and an exact resume.

Exact resume: an epoch's samples, augmentations and dropout masks are drawn from generators
seeded by (seed, epoch[, rank]), never from state carried over, and `latest.pt` (weights,
optimizer, progress) is written after every epoch; so after a kill, `--resume` replays the
unfinished epoch exactly and ends with the weights an uninterrupted run ends with (CPU).

DDP: every rank builds the same global batch keys; rank r takes keys r::world_size, the
gradients are averaged, and only rank 0 validates and writes.

Device and precision: the model trains on `run.info.device` (a GPU when there is one), batches
come from pinned memory with non-blocking copies there, and the slice encoder runs under the
autocast `ichdet.engine.precision.resolve_precision` chooses for `cfg.precision` on that device
(bf16 only where it is native; fp16 on a GPU without bf16, with a gradient scaler).
"""
from __future__ import annotations

import csv
import io
import math
import time
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ichdet.datasets.slices import shard
from ichdet.engine.checkpoint import BEST, TrainState, load_checkpoint, restore, save_best, save_checkpoint
from ichdet.engine.distributed import barrier, broadcast_object
from ichdet.engine.precision import resolve_precision
from ichdet.engine.run import Run
from ichdet.engine.tasks import training_loss
from ichdet.errors import InputError
from ichdet.fileio import write_text_atomic

# train_loss is the loss trained on; with a slice loss (optim.slice_loss_weight w) it is the scan loss
# + w x train_slice_loss (the slice loss, averaged over the epoch's batches as train_loss is);
# empty without one. val_slice_auc: the scan stages' slice head on the labelled validation slices.
METRICS_COLUMNS = ("epoch", "samples", "train_loss", "train_accuracy", "train_slice_loss", "val_loss",
                   "val_accuracy", "val_auc", "val_subtype_auc", "val_slice_auc", "val_dice", "val_class_dice", "val_n",
                   "lr", "seconds",
                   "data_wait_fraction", "best")


def make_optimizer(run: Run, model: torch.nn.Module) -> torch.optim.Optimizer:
    from ichdet.models.finetune import param_groups

    o = run.cfg.optim
    groups = param_groups(model, o.lr, run.cfg.model.lr_mult)
    if not groups or not any(g["params"] for g in groups):
        raise InputError("no trainable parameters: check model.trainable / model.freeze_encoder")
    for g in groups:
        g["base_lr"] = g["lr"]  # the schedule scales this (lr_factor)
    if o.name == "adam":  # fused: one kernel for all tensors (the same update; fewer launches on a GPU)
        return torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay, fused=True)
    if o.name == "rmsprop":  # Keras' defaults (rho 0.9, epsilon 1e-7), as the paper used Keras
        return torch.optim.RMSprop(groups, lr=o.lr, alpha=0.9, eps=1e-7, weight_decay=o.weight_decay)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate factor of optimiser step `step` (0-based) of `total`: linear warm-up over the
    first `warmup` steps, then 1 ("constant") or a cosine from 1 to 0 at the last step ("cosine")."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        span = max(total - warmup - 1, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))
    return 1.0


def _better(metric: str, value: float, best: float | None) -> bool:
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value < best if metric == "loss" else value > best


def write_metrics_csv(run: Run, state: TrainState) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in state.history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text_atomic(run.out / "metrics.csv", buf.getvalue())


def to_device(batch: Any, device: torch.device) -> Any:
    """Every tensor of a batch (tuples and lists of tensors and other values) on `device`; the
    copies are asynchronous from pinned memory. A no-op on the CPU."""
    if isinstance(batch, torch.Tensor):
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**63)


def fit(run: Run, model: torch.nn.Module, task: Any, resume: bool) -> TrainState:
    """Train `model` on `task` for the configured epochs; returns the progress (best epoch etc.).
    On return `model` holds the best-by-validation weights."""
    cfg, info = run.cfg, run.info
    device = info.device
    precision = resolve_precision(cfg.precision, device)
    run.log(f"training on {device.type} in {precision.dtype} ({precision.note})")
    model.to(device)
    optimizer = make_optimizer(run, model)
    scaler = precision.grad_scaler()
    state = TrainState()
    if resume and (run.out / "latest.pt").exists():
        state = restore(run.out, model, optimizer, scaler)
        run.log(f"resuming after epoch {state.epoch} (best {cfg.optim.select_metric} "
                f"{state.best_metric} at epoch {state.best_epoch})")
    stopped = bool(state.history and state.history[-1].get("stopped"))
    wrapped = (DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=cfg.stage == "scan")
               if info.enabled else model)
    B, W = cfg.optim.batch_size, info.world_size
    if B % W:
        raise InputError(f"optim.batch_size {B} must be divisible by the number of processes {W}")
    steps_per_epoch = cfg.optim.steps_per_epoch  # every epoch draws steps_per_epoch x batch_size samples
    total_steps = steps_per_epoch * cfg.optim.epochs
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
    # checkpoints (an AlexNet's latest.pt is 0.7 GB) at most every cfg.checkpoint_seconds: the best
    # weights wait in memory until then; a resumed run replays the epochs since (same seeds per epoch)
    best_weights, best_unsaved, last_saved = None, False, time.monotonic()
    while state.epoch < cfg.optim.epochs and not stopped:
        epoch = state.epoch + 1
        torch.manual_seed(_epoch_seed(cfg.seed, epoch, info.rank))  # dropout masks of this epoch
        keys = task.epoch_keys(epoch)
        batches = [shard(keys[i:i + B], info.rank, W) for i in range(0, len(keys), B)]
        loader = DataLoader(task.dataset, batch_sampler=batches, num_workers=cfg.data.workers,
                            collate_fn=task.collate, pin_memory=device.type == "cuda")
        wrapped.train()
        t0, waited, loss_sum, hits, seen = time.perf_counter(), 0.0, 0.0, 0, 0
        slice_sum: float | None = None  # the slice loss's sum, as loss_sum, when batches bring one
        bar = tqdm(total=len(batches), desc=f"{cfg.experiment or cfg.stage} {epoch}/{cfg.optim.epochs}",
                   unit="step", disable=None if (run.show_progress and info.is_main) else True, leave=False)
        t_wait = time.perf_counter()
        for i, batch in enumerate(loader):
            waited += time.perf_counter() - t_wait
            factor = lr_factor((epoch - 1) * steps_per_epoch + i, total_steps, warmup_steps, cfg.optim.schedule)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * factor
            with precision.autocast():
                logits, y, *slices = task.forward(wrapped, to_device(batch, device))
            loss, h, slice_loss = training_loss(logits, y, task.loss, *slices)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.optim.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.item() * len(y)
            if slice_loss is not None:
                slice_sum = (slice_sum or 0.0) + slice_loss.item() * len(y)
            hits, seen = hits + h, seen + len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{hits / seen:.3f}")
            t_wait = time.perf_counter()
        bar.close()
        seconds = time.perf_counter() - t0
        val = broadcast_object(task.validate(model) if info.is_main else None, info)
        metric = val["val_loss" if cfg.optim.select_metric == "loss" else f"val_{cfg.optim.select_metric}"]
        improved = _better(cfg.optim.select_metric, metric, state.best_metric)
        state.epoch = epoch
        if improved:
            state.best_metric, state.best_epoch, state.bad_epochs = float(metric), epoch, 0
            if info.is_main:
                best_weights, best_unsaved = {k: v.detach().clone() for k, v in model.state_dict().items()}, True
        else:
            state.bad_epochs += 1
        stopped = bool(cfg.optim.patience and state.bad_epochs >= cfg.optim.patience)
        slice_part = {} if slice_sum is None else {"train_slice_loss": slice_sum / max(seen, 1)}
        state.history.append({"epoch": epoch, "samples": seen * W, "train_loss": loss_sum / max(seen, 1),
                              "train_accuracy": hits / max(seen, 1), **slice_part, **val,
                              "lr": optimizer.param_groups[0]["lr"],
                              "seconds": seconds, "data_wait_fraction": waited / max(seconds, 1e-9),
                              "best": int(improved), "stopped": stopped})
        if info.is_main:
            if stopped or epoch == cfg.optim.epochs or time.monotonic() - last_saved >= cfg.checkpoint_seconds:
                if best_unsaved:
                    save_best(run.out, best_weights, state)
                    best_unsaved = False
                save_checkpoint(run.out, model, optimizer, state, cfg.to_dict(), scaler)
                last_saved = time.monotonic()
            write_metrics_csv(run, state)
        run.log(f"epoch {epoch}/{cfg.optim.epochs}: loss {loss_sum / max(seen, 1):.4f}"
                + (f" (slice {slice_part['train_slice_loss']:.4f})" if slice_part else "") +
                f" acc {hits / max(seen, 1):.3f} | "
                f"val auc {val['val_auc']:.4f} acc {val['val_accuracy']:.3f} loss {val['val_loss']:.4f}"
                + (f" subtype auc {val['val_subtype_auc']:.4f}" if "val_subtype_auc" in val else "")
                + (f" slice auc {val['val_slice_auc']:.4f}" if "val_slice_auc" in val else "")
                + (f" dice {val['val_dice']:.4f}" if "val_dice" in val else "") +
                f"{' *' if improved else ''} | {seconds:.1f} s, data wait {100 * waited / max(seconds, 1e-9):.0f}%")
        barrier(info)
        if stopped:
            run.log(f"early stop: no {cfg.optim.select_metric} improvement for {cfg.optim.patience} epochs")
    best = run.out / BEST
    if best_weights is not None:
        model.load_state_dict(best_weights)
    elif best.exists():
        model.load_state_dict(load_checkpoint(best)["model"])
    return state
