"""Fixtures for the training tests: one small synthetic cohort, and tiny-model config overrides."""
from __future__ import annotations

from pathlib import Path

import pytest

from ichdet.synth import make_cohort


@pytest.fixture(scope="session")
def train_manifest(tmp_path_factory) -> Path:
    """24 synthetic DICOM scans (half positive), 64 px, 12 slices of 5 mm, with slice labels."""
    return make_cohort(tmp_path_factory.mktemp("train_cohort"), 24, seed=5, size=64, n_slices=12)


@pytest.fixture
def tiny(train_manifest, tmp_path) -> list[str]:
    """--set overrides: a 2-wide slice CNN with 16 features on 64 px slices, 2 short epochs, a
    private cache, one thread (bitwise-reproducible runs)."""
    return [f"data.manifest={train_manifest}", f"data.cache={tmp_path / 'cache'}", "data.size=64",
            "model.kwargs={base_width: 2, feature_dim: 16}", "optim.epochs=2", "optim.steps_per_epoch=3",
            "optim.batch_size=4", "optim.val_samples=40", "threads=1", "precision=fp32"]
