"""Atomic writes: a temp file in the same folder, then `os.replace`, so readers never see half a file.

A write that fails (OSError, RuntimeError) while the disk is (nearly) full is an `InputError` that
says so, naming the file and the space left, whatever the writer raised (torch.save's is "unexpected
pos 616953344 vs 616953232"); what was there before stays as it was.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ichdet.errors import InputError, error_summary

FULL_DISK_BYTES = 64 * 2**20  # a write that fails with less than this left on its disk failed for want of space


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    Works for files and for folders (the caller creates whichever it needs at the yielded path).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink() and tmp.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except Exception as e:
        _raise_if_disk_full(e, path)  # measured before the temp file's space is given back
        raise
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _raise_if_disk_full(error: Exception, path: Path) -> None:
    if not isinstance(error, (OSError, RuntimeError)):  # how writers fail on a full disk (torch.save: RuntimeError)
        return
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    if free < FULL_DISK_BYTES:
        raise InputError(f"could not be written: its disk is full ({free / 2**20:.1f} MiB free; "
                         f"{error_summary(error)}); free some space or "
                         "write elsewhere, then run again (nothing written before is lost)", path) from error


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """`data` as indented JSON, atomically; numpy arrays and scalars become lists and numbers."""
    def default(o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        return str(o)

    return write_text_atomic(path, json.dumps(data, indent=2, default=default) + "\n")
