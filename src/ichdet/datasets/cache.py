"""A content-keyed on-disk cache of prepared arrays, so a cohort is decoded once, not every epoch.

An entry is one ``.npy`` file named by the sha256 of a JSON of its key parts (which callers
fill with source-file fingerprints, the `PrepSpec` dict and the ichdet version). Entries are
written atomically (temp file + rename) and read memory-mapped, so DataLoader workers and
parallel processes can share a cache: two workers computing the same key both write, the
last rename wins, and readers never see half a file. A truncated or unreadable entry is
removed and recomputed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

import ichdet
from ichdet.errors import InputError
from ichdet.fileio import atomic_path, write_text_atomic

EDGE_BYTES = 64 * 1024  # bytes hashed at each end of a file by the fast fingerprint
READ_CHUNK_BYTES = 1024 * 1024  # block size when hashing whole files


def default_cache_root() -> Path:
    """``$ICHDET_CACHE``, else ``$XDG_CACHE_HOME/ichdet``, else ``~/.cache/ichdet``."""
    if os.environ.get("ICHDET_CACHE"):
        return Path(os.environ["ICHDET_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "ichdet"
    return Path.home() / ".cache" / "ichdet"


def fingerprint_files(paths: Iterable[str | Path], strict: bool = False) -> str:
    """sha256 hex over each file's resolved path, size, mtime_ns and content sample.

    Fast mode (default) hashes the first and last 64 KiB of content: it catches a changed
    header, changed pixel tail, truncation and any rewrite that moves size or mtime, but not an
    in-place edit of the middle of a file that keeps both size and mtime (rare in practice; a
    DICOM slice is ~0.5 MiB). ``strict=True`` hashes whole contents (reads every byte once).
    Paths are sorted, so the order they are given in does not matter.
    """
    h = hashlib.sha256()
    files = sorted(Path(p).resolve() for p in paths)
    for path in files:
        try:
            st = path.stat()
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
            with open(path, "rb") as fh:
                if strict or st.st_size <= 2 * EDGE_BYTES:
                    for block in iter(lambda: fh.read(READ_CHUNK_BYTES), b""):
                        h.update(block)
                else:
                    h.update(fh.read(EDGE_BYTES))
                    fh.seek(-EDGE_BYTES, os.SEEK_END)
                    h.update(fh.read(EDGE_BYTES))
        except OSError as e:
            raise InputError(f"cannot fingerprint: {e.strerror or e}", path) from e
    h.update(f"n={len(files)}".encode())
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    """JSON fallback for the types callers put in key parts; anything else is refused."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise InputError(f"cache key parts must be JSON-like, got {type(obj).__name__}: {obj!r:.80}")


def cache_key(key_parts: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of `key_parts` (sorted keys, tuples as lists)."""
    text = json.dumps(key_parts, sort_keys=True, separators=(",", ":"), default=_jsonable, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def volume_key_parts(paths: Iterable[str | Path], spec: Mapping[str, Any], strict: bool = False,
                     **extra: Any) -> dict[str, Any]:
    """The usual key parts of a prepared volume: its files' fingerprint, the spec dict
    (e.g. ``PrepSpec.to_dict()``), the ichdet version, and any `extra` (e.g. series_uid)."""
    return {"files": fingerprint_files(paths, strict=strict), "spec": dict(spec),
            "ichdet": ichdet.__version__, **extra}


def _npy_complete(path: Path) -> bool:
    """True when the .npy header parses and the file holds exactly the bytes it promises."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    except (OSError, ValueError, EOFError):
        return False
    if dtype.hasobject:
        return False
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return path.stat().st_size == expected


class PreparedCache:
    """Prepared arrays on disk, keyed by content: ``root/<k[:2]>/<k>.npy`` (+ ``.json`` with
    the key parts, for people). ``root=None`` uses `default_cache_root()` / "prepared"."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_root() / "prepared"

    def path_for(self, key_parts: Mapping[str, Any]) -> Path:
        k = cache_key(key_parts)
        return self.root / k[:2] / f"{k}.npy"

    def load(self, key_parts: Mapping[str, Any]) -> np.ndarray | None:
        """The cached array (read-only memory map), or None when absent or corrupt (removed)."""
        return self._load(self.path_for(key_parts))

    def _load(self, path: Path) -> np.ndarray | None:
        if not path.is_file():
            return None
        if _npy_complete(path):
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError):
                pass
            else:
                return arr if arr.size else np.load(path, allow_pickle=False)  # an empty file cannot be mapped
        path.unlink(missing_ok=True)  # corrupt or truncated: drop it, the caller recomputes
        return None

    def get_or_compute(self, key_parts: Mapping[str, Any], compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for `key_parts`, else ``compute()`` stored then returned (memory-mapped)."""
        path = self.path_for(key_parts)
        arr = self._load(path)
        if arr is not None:
            return arr
        value = np.asarray(compute())
        if value.dtype.hasobject:
            raise InputError(f"cannot cache an array of Python objects, got dtype {value.dtype}")
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, value, allow_pickle=False)
        meta = path.with_suffix(".json")
        if not meta.exists():
            write_text_atomic(meta, json.dumps(key_parts, sort_keys=True, indent=1, default=_jsonable))
        arr = self._load(path)
        return arr if arr is not None else value  # removed by a concurrent clear(): hand back ours

    def clear(self) -> int:
        """Remove every entry; returns how many arrays were removed."""
        n = 0
        if self.root.is_dir():
            for f in self.root.glob("??/*"):
                if f.suffix in (".npy", ".json") and f.is_file():
                    n += f.suffix == ".npy"
                    f.unlink(missing_ok=True)
        return n

    def __repr__(self) -> str:
        return f"PreparedCache(root={str(self.root)!r})"
