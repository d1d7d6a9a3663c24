"""`ichdet.workers`: jobs in spawned processes, in dependency order, with their share of the threads."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from ichdet.errors import InputError
from ichdet.workers import job_count, run_jobs


def _record(job: tuple[str, float]) -> dict:
    """A job: say its name on stderr, take `seconds`, report where and when it ran."""
    import torch

    name, seconds = job
    start = time.time()
    print(f"running {name}", file=sys.stderr)
    time.sleep(seconds)
    return {"pid": os.getpid(), "threads": torch.get_num_threads(), "start": start, "end": time.time()}


def _fail(job: str) -> None:
    if job == "bad":
        raise ValueError("job bad failed")
    time.sleep(0.2)


def test_job_count_rule():
    assert [job_count(0, 6, cores=c) for c in (1, 2, 3, 4, 8, 32)] == [1, 2, 2, 2, 4, 4]
    assert job_count(0, 1, cores=8) == 1  # never more runs at once than there are
    assert job_count(3, 6, cores=2) == 3  # an explicit --jobs is taken as given
    with pytest.raises(InputError, match=r"^--jobs must be 0 \(auto\) or a positive number, got -1$"):
        job_count(-1, 6)


def test_jobs_run_in_workers_after_what_they_need(capfd):
    jobs = {"a": ("a", 1.0), "b": ("b", 0.1), "c": ("c", 0.1), "d": ("d", 0.1)}
    out = run_jobs(_record, jobs, workers=2, needs={"c": ["a"], "d": ["c", "not-a-job"]}, threads=1)
    assert sorted(out) == ["a", "b", "c", "d"]
    assert {r["pid"] for r in out.values()}.isdisjoint({os.getpid()})
    assert len({r["pid"] for r in out.values()}) == 2  # two workers, reused
    assert all(r["threads"] == 1 for r in out.values())
    assert out["c"]["start"] >= out["a"]["end"] and out["d"]["start"] >= out["c"]["end"]
    assert out["b"]["start"] < out["a"]["end"]  # b did not wait: it needs nothing
    err = capfd.readouterr().err.splitlines()
    assert {f"[{n}] running {n}" for n in jobs} <= set(err)


def test_one_worker_runs_here_in_dependency_order():
    out = run_jobs(_record, {"x": ("x", 0.0), "y": ("y", 0.0)}, workers=1, needs={"x": ["y"]})
    assert list(out) == ["y", "x"]
    assert {r["pid"] for r in out.values()} == {os.getpid()}


def test_a_cycle_is_refused():
    with pytest.raises(InputError, match=r"^jobs wait for each other in a cycle: a, b$"):
        run_jobs(_record, {"a": ("a", 0), "b": ("b", 0)}, workers=2, needs={"a": ["b"], "b": ["a"]})


def test_a_failing_job_stops_the_run_with_its_error():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="^job bad failed$"):
        run_jobs(_fail, {n: n for n in ("bad", "x", "y", "z")}, workers=2, threads=1)
    assert time.perf_counter() - t0 < 30


PARENT = """
import os, sys, time
from ichdet.workers import run_jobs

def job(path):
    open(path, "w").write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    run_jobs(job, {"a": sys.argv[1] + "/a", "b": sys.argv[1] + "/b"}, workers=2, threads=1)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_workers_die_with_their_parent(tmp_path):
    """SIGTERM to the command (a stopped `ichdet cv` or demo) leaves no worker training on."""
    import signal
    import subprocess

    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        written = lambda n: (tmp_path / n).is_file() and (tmp_path / n).read_text() != ""  # noqa: E731 - created, then written
        while not (written("a") and written("b")) and time.time() < deadline:
            time.sleep(0.2)
        pids = [int((tmp_path / n).read_text()) for n in ("a", "b")]
        parent.send_signal(signal.SIGTERM)
        parent.wait(30)
        deadline = time.time() + 20
        while any(Path(f"/proc/{p}").exists() for p in pids) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(Path(f"/proc/{p}").exists() for p in pids)
    finally:
        parent.kill()
