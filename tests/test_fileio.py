"""Atomic writes: the old file survives a failed write, and a full disk is named as the cause."""
from __future__ import annotations

import pytest
import torch

from ichdet.engine.checkpoint import save_torch_atomic
from ichdet.errors import InputError
from ichdet.fileio import atomic_path, write_text_atomic


def test_a_checkpoint_larger_than_the_disk_is_a_one_line_disk_full_error(small_disk):
    disk = small_disk(1)
    path = save_torch_atomic({"w": torch.ones(10)}, disk / "latest.pt")
    before = path.read_bytes()
    with pytest.raises(InputError) as e:
        save_torch_atomic({"w": torch.zeros(2**19)}, path)  # 2 MiB of float32 on a 1 MiB disk
    msg = str(e.value)
    assert msg.startswith(f"{path}: could not be written: its disk is full (")
    assert "MiB free; RuntimeError: [enforce fail at inline_container.cc" in msg  # torch.save's own words, kept
    assert msg.endswith("); free some space or write elsewhere, then run again (nothing written before is lost)")
    assert "\n" not in msg
    assert path.read_bytes() == before and [p.name for p in disk.iterdir()] == ["latest.pt"]  # no temp file left


def test_a_plain_write_that_fills_the_disk_names_the_os_error(small_disk):
    disk = small_disk(1)
    with pytest.raises(InputError, match=r"report\.md: could not be written: its disk is full \(\d+\.\d MiB free; "
                                         r"OSError: \[Errno 28\] No space left on device"):
        write_text_atomic(disk / "report.md", "x" * 2 * 2**20)
    assert list(disk.iterdir()) == []


def test_other_failures_pass_through_unchanged_and_leave_nothing(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(ValueError, match="^the writer's own error$"):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise ValueError("the writer's own error")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_the_disk_full_check_reads_the_space_left_beside_the_file(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted (the two tests above skip): the same decision with the space
    left reported as 5 MiB, then as 1 GiB."""
    import ichdet.fileio as fileio

    usage = {"free": 5 * 2**20}
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda p: type("U", (), usage)())
    with pytest.raises(InputError, match=r"b\.pt: could not be written: its disk is full \(5\.0 MiB free; "
                                         r"RuntimeError: unexpected pos 616953344 vs 616953232\)"):
        with atomic_path(tmp_path / "b.pt") as tmp:
            tmp.write_bytes(b"x")
            raise RuntimeError("unexpected pos 616953344 vs 616953232\nmore lines")
    with pytest.raises(ValueError, match="^not a write failure$"):  # not how a write fails: passed on as it is
        with atomic_path(tmp_path / "b.pt"):
            raise ValueError("not a write failure")
    usage["free"] = 2**30
    with pytest.raises(RuntimeError, match="^unexpected pos"):
        with atomic_path(tmp_path / "b.pt"):
            raise RuntimeError("unexpected pos 616953344 vs 616953232")
    assert list(tmp_path.iterdir()) == []
