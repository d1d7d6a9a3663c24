"""Shared fixtures: paths to the real data (skipped with a reason when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ICHDET_SHARED", REPO.parent / "shared"))
CQ500_DIR = SHARED / "data" / "cq500-ct-1"


@pytest.fixture(scope="session")
def cq500_dir() -> Path:
    if not (CQ500_DIR / "CT000001.dcm").is_file():
        pytest.skip(f"real CQ500 series not present at {CQ500_DIR}")
    return CQ500_DIR


@pytest.fixture(scope="session")
def pydicom_data_dir() -> Path:
    try:
        from pydicom_data import __file__ as f  # type: ignore[import-not-found]
    except ImportError:
        pytest.skip("pydicom-data is not installed")
    d = Path(f).parent / "data"
    if not (d / "693_UNCR.dcm").is_file():
        cand = list(Path(f).parent.rglob("693_UNCR.dcm"))
        if not cand:
            pytest.skip("693_UNCR.dcm not found in pydicom-data")
        d = cand[0].parent
    return d
