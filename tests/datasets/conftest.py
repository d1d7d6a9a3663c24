"""Fixtures for the training-data tests: one small synthetic cohort per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from ichdet.synth import make_cohort

COHORT_SEED = 1
COHORT_SCANS = 8  # patients 0-5 one scan each, patient 6 two (scans 6 and 7); 4 positive scans


@pytest.fixture(scope="session")
def cohort_manifest(tmp_path_factory) -> Path:
    """8 synthetic DICOM scans, 64 px, 30 slices of 5 mm (skull base to vertex, so the lowest and
    highest slices are not cranial), with manifest.csv and slice_labels.csv."""
    return make_cohort(tmp_path_factory.mktemp("cohort"), COHORT_SCANS, seed=COHORT_SEED, size=64)
