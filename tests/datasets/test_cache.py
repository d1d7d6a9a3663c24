"""PreparedCache: computed once, keyed by content and spec, robust to corrupt entries."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import ichdet
from ichdet.datasets.cache import (
    EDGE_BYTES, PreparedCache, cache_key, default_cache_root, fingerprint_files, volume_key_parts,
)
from ichdet.errors import InputError
from ichdet.preprocess import PrepSpec


class Counter:
    def __init__(self, value: np.ndarray):
        self.calls, self.value = 0, value

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return self.value


def test_second_call_does_not_compute(tmp_path):
    cache = PreparedCache(tmp_path)
    compute = Counter(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    parts = {"files": "abc", "spec": PrepSpec().to_dict(), "ichdet": "0.1.0"}
    first = cache.get_or_compute(parts, compute)
    second = cache.get_or_compute(parts, compute)
    assert compute.calls == 1
    np.testing.assert_array_equal(second, compute.value)
    assert isinstance(second, np.memmap) and not second.flags.writeable and second.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    assert PreparedCache(tmp_path).get_or_compute(parts, compute) is not None and compute.calls == 1
    assert cache.path_for(parts).with_suffix(".json").is_file()


def test_key_changes_with_spec_and_is_order_free(tmp_path):
    a = {"files": "abc", "spec": PrepSpec().to_dict()}
    b = {"files": "abc", "spec": PrepSpec(size=128).to_dict()}
    assert cache_key(a) != cache_key(b)
    assert cache_key(a) == cache_key(dict(reversed(list(a.items()))))
    assert cache_key({"p": Path("/x"), "n": np.int64(3)}) == cache_key({"p": "/x", "n": 3})
    cache = PreparedCache(tmp_path)
    ca, cb = Counter(np.zeros(3)), Counter(np.ones(3))
    assert cache.get_or_compute(a, ca).sum() == 0 and cache.get_or_compute(b, cb).sum() == 3
    assert ca.calls == cb.calls == 1
    with pytest.raises(InputError, match="JSON-like"):
        cache_key({"x": object()})


@pytest.mark.parametrize("keep", [0, 20, 100])  # bytes kept: empty, inside the header, inside the data
def test_truncated_entry_is_recomputed(tmp_path, keep):
    cache = PreparedCache(tmp_path)
    parts = {"k": 1}
    compute = Counter(np.random.default_rng(0).random((8, 16)).astype(np.float32))
    cache.get_or_compute(parts, compute)
    path = cache.path_for(parts)
    with open(path, "r+b") as fh:
        fh.truncate(keep)
    assert cache.load(parts) is None and not path.exists()  # detected and removed
    out = cache.get_or_compute(parts, compute)
    assert compute.calls == 2
    np.testing.assert_array_equal(out, compute.value)


def test_empty_and_object_arrays(tmp_path):
    cache = PreparedCache(tmp_path)
    empty = cache.get_or_compute({"e": 1}, lambda: np.zeros((0, 4), np.float32))
    assert empty.shape == (0, 4)
    assert cache.get_or_compute({"e": 1}, lambda: pytest.fail("recomputed")).shape == (0, 4)
    with pytest.raises(InputError, match="dtype object"):
        cache.get_or_compute({"o": 1}, lambda: np.array([{}, []], dtype=object))
    assert cache.clear() == 1 and cache.load({"e": 1}) is None


def test_concurrent_compute_of_same_key(tmp_path):
    cache = PreparedCache(tmp_path)
    value = np.arange(100_000, dtype=np.float32)
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda _: cache.get_or_compute({"same": 1}, lambda: value.copy()), range(16)))
    for out in outs:
        np.testing.assert_array_equal(out, value)
    assert [p.name for p in cache.path_for({"same": 1}).parent.iterdir() if p.name.startswith(".")] == []


def test_fingerprint_sees_content_size_and_path(tmp_path):
    f = tmp_path / "a.dcm"
    data = bytearray(os.urandom(3 * EDGE_BYTES))
    f.write_bytes(data)
    st = f.stat()
    fp = fingerprint_files([f])
    assert fp == fingerprint_files([str(f)]) and len(fp) == 64

    def rewrite(pos: int) -> None:  # same size and mtime: only content hashing can tell
        changed = bytearray(data)
        changed[pos] ^= 0xFF
        f.write_bytes(changed)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))

    rewrite(10)  # in the first 64 KiB
    assert fingerprint_files([f]) != fp
    rewrite(len(data) - 10)  # in the last 64 KiB
    assert fingerprint_files([f]) != fp
    rewrite(len(data) // 2)  # the documented blind spot of the fast mode; strict sees it
    assert fingerprint_files([f]) == fp
    f.write_bytes(data)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    strict_fp = fingerprint_files([f], strict=True)
    rewrite(len(data) // 2)
    assert fingerprint_files([f], strict=True) != strict_fp

    g = tmp_path / "b.dcm"
    g.write_bytes(b"x")
    assert fingerprint_files([f, g]) == fingerprint_files([g, f]) != fingerprint_files([f])
    with pytest.raises(InputError, match="missing.dcm"):
        fingerprint_files([tmp_path / "missing.dcm"])


def test_volume_key_parts_and_default_root(tmp_path, monkeypatch):
    f = tmp_path / "v.nii.gz"
    f.write_bytes(b"\x00" * 100)
    parts = volume_key_parts([f], PrepSpec().to_dict(), series_uid="1.2.3")
    assert parts["ichdet"] == ichdet.__version__ and parts["series_uid"] == "1.2.3"
    assert parts["spec"]["windows"] == ["brain"]
    monkeypatch.setenv("ICHDET_CACHE", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c"
    assert PreparedCache().root == tmp_path / "c" / "prepared"
    monkeypatch.delenv("ICHDET_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_root() == Path.home() / ".cache" / "ichdet"
