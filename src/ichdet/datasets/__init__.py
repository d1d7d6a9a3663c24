"""Manifests, dataset adapters, splits, prepared scans and torch Datasets.

The torch-based parts (`augment`, `slices`, `scans`) are imported on first use, so reading a
manifest (adapters, synth, the CLI) does not pay for importing torch and MONAI.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

Progress = Callable[[int, int], None]  # progress(done, total), called after each item of a long job

_LAZY = {
    # splits
    "SPLITS": "splits", "read_splits": "splits", "split_by_patient": "splits", "split_counts": "splits",
    "splits_from_column": "splits", "write_splits": "splits",
    # prepared scans
    "PreparedCohort": "prepared", "PreparedScan": "prepared", "load_prepared": "prepared",
    "align_slice_labels": "prepared",
    # augmentation
    "augment_slice": "augment", "augment_volume": "augment", "sample_rng": "augment",
    # slice samples and sampling
    "SliceDataset": "slices", "SliceEntry": "slices", "SliceIndex": "slices", "balanced_epoch": "slices",
    "epoch_keys": "slices", "shard": "slices", "stack_context": "slices", "validation_sample": "slices",
    # scan sequences
    "ScanDataset": "scans", "balanced_scan_epoch": "scans", "collate_scans": "scans",
    "volume_to_sequence": "scans",
}

__all__ = sorted([*_LAZY, "Progress"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
