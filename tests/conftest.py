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
    """Folder of the `pydicom-data` package (real test files such as 693_UNCR.dcm)."""
    try:
        from pydicom.data import get_testdata_file
        f = get_testdata_file("693_UNCR.dcm")
    except Exception as e:  # noqa: BLE001 - any failure here means "not available"
        pytest.skip(f"pydicom-data not available ({e})")
    if not f:
        pytest.skip("693_UNCR.dcm not found; install pydicom-data")
    return Path(f).parent


@pytest.fixture
def small_disk(tmp_path):
    """`mount(mib) -> folder`: a real tmpfs of that size under tmp_path, unmounted after the test (needs
    root and the mount capability: the test is skipped without them)."""
    import gc
    import subprocess

    mounted: list[Path] = []

    def mount(mib: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(folder)],
                                  capture_output=True)
        except FileNotFoundError:
            pytest.skip("no mount command")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(folder)
        return folder

    yield mount
    gc.collect()  # a failed torch.save's writer may still hold its file open
    for folder in mounted:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)
