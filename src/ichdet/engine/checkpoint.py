"""Training checkpoints written atomically: `latest.pt` after every epoch (everything needed to
resume exactly), `best.pt` whenever validation improves (the weights a bundle ships).

Randomness is not stored: every epoch re-derives its generators from (seed, epoch), so a run
resumed after epoch k replays epoch k+1 exactly as an uninterrupted run would.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ichdet.errors import InputError
from ichdet.fileio import atomic_path

LATEST, BEST = "latest.pt", "best.pt"


@dataclass
class TrainState:
    """Progress that survives a restart."""

    epoch: int = 0  # epochs completed
    best_metric: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the last improvement (early stopping)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "best_metric": self.best_metric, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "history": self.history}


def save_torch_atomic(obj: Any, path: Path) -> Path:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)
    return path


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: TrainState, config: dict[str, Any], scaler: torch.amp.GradScaler | None = None) -> Path:
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
               "state": state.to_dict(), "config": config,
               "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None}
    return save_torch_atomic(payload, run_dir / LATEST)


def save_best(run_dir: Path, weights: dict[str, torch.Tensor], state: TrainState) -> Path:
    """best.pt: the best-by-validation `weights` (a state dict), their epoch and metric."""
    return save_torch_atomic({"model": weights, "epoch": state.best_epoch, "metric": state.best_metric},
                             run_dir / BEST)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint dict; a missing or unreadable file is an InputError naming it."""
    if not path.is_file():
        raise InputError("checkpoint not found", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise InputError(f"checkpoint unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120]})", path) from None


def restore(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
            scaler: torch.amp.GradScaler | None = None) -> TrainState:
    """Load `latest.pt` into `model`, `optimizer` and (fp16 on a GPU) the gradient scaler; returns
    the saved progress."""
    ckpt = load_checkpoint(run_dir / LATEST)
    model.load_state_dict(ckpt["model"])
    if optimizer is not None and ckpt.get("optimizer"):
        optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and scaler.is_enabled() and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    s = ckpt["state"]
    return TrainState(epoch=s["epoch"], best_metric=s["best_metric"], best_epoch=s["best_epoch"],
                      bad_epochs=s["bad_epochs"], history=list(s["history"]))
