"""Independent jobs (training runs, folds, synthetic scans) in spawned worker processes.

Two small CNN trainings at one thread each get through more work on 2 cores than one after the
other at two threads (torch's intra-op threads scale poorly on small layers: one quick slice-CNN
epoch took 19.5 s at 1 thread and 14.8 s at 2 on the Intel Xeon under the AVX2 overrides), so
`ichdet cv` and `ichdet demo` run their independent runs `job_count` at a time.

`run_jobs(fn, jobs, workers, needs)` calls ``fn(job)`` for every named job, at most `workers` at once,
a job only after every job it `needs` has finished, in the given order otherwise. Each worker
process gets `cores // workers` torch threads; the lines a job writes to stderr start with
``[name] ``. A worker dies with its parent (Linux: the parent-death signal), so stopping
the command stops its workers. With one worker the jobs run here, in order.
"""
from __future__ import annotations

import io
import os
import sys
from typing import Any, Callable, Mapping, Sequence

from ichdet.errors import InputError

MAX_AUTO_WORKERS = 4  # runs at once by default (memory: about 2 GB each with AlexNet)


def job_count(jobs: int, n_jobs: int, cores: int | None = None) -> int:
    """Runs at once: `jobs`, or with 0 one per core up to two, then one per two cores (small CNNs
    use many threads poorly), at most `MAX_AUTO_WORKERS`; never more than `n_jobs`."""
    cores = cores or os.cpu_count() or 1
    if jobs < 0:
        raise InputError(f"--jobs must be 0 (auto) or a positive number, got {jobs}")
    if jobs == 0:
        jobs = min(MAX_AUTO_WORKERS, max(min(cores, 2), cores // 2))
    return max(1, min(jobs, n_jobs))


def threads_per_worker(workers: int) -> int:
    """Torch threads for each of `workers` processes: their share of the cores, at least one."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


class LinePrefix(io.TextIOBase):
    """A text stream that starts every line with `prefix` (a worker's log among its peers')."""

    def __init__(self, stream: Any, prefix: str):
        self.stream, self.prefix, self.fresh = stream, prefix, True

    def write(self, text: str) -> int:
        for line in text.splitlines(keepends=True):
            self.stream.write((self.prefix if self.fresh else "") + line)
            self.fresh = line.endswith("\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _start_worker(threads: int) -> None:
    """A worker's initializer: its share of the cores (torch reads OMP_NUM_THREADS when first
    imported; a job that needs no torch does not pay for importing it), and death with the parent."""
    import signal

    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if sys.platform.startswith("linux"):
        import ctypes

        try:  # PR_SET_PDEATHSIG = 1: SIGTERM when the parent dies (killed, Ctrl-C, SIGTERM)
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
        except (OSError, AttributeError):
            pass


def _call(fn: Callable[[Any], Any], name: str, job: Any) -> Any:
    """One job in a worker, its stderr lines prefixed "[name] " (a worker runs several jobs)."""
    stream = sys.stderr.stream if isinstance(sys.stderr, LinePrefix) else sys.stderr
    sys.stderr = LinePrefix(stream, f"[{name}] ")
    try:
        return fn(job)
    finally:
        sys.stderr.flush()
        sys.stderr = stream


def _check_needs(names: Sequence[str], needs: Mapping[str, Sequence[str]]) -> dict[str, set[str]]:
    """{job: the jobs it waits for} (a need that is not a job here is taken as done); a cycle is an error."""
    deps = {n: {d for d in needs.get(n, ()) if d in names and d != n} for n in names}
    done: set[str] = set()
    while len(done) < len(names):
        ready = [n for n in names if n not in done and deps[n] <= done]
        if not ready:
            raise InputError(f"jobs wait for each other in a cycle: {', '.join(n for n in names if n not in done)}")
        done.update(ready)
    return deps


def run_jobs(fn: Callable[[Any], Any], jobs: Mapping[str, Any], workers: int,
             needs: Mapping[str, Sequence[str]] | None = None, threads: int | None = None,
             finished: Callable[[str, Any], None] | None = None) -> dict[str, Any]:
    """{name: fn(job)} for every job (see the module docstring). `threads`: torch threads per worker
    (default cores // workers); `finished(name, result)` is called here as each job ends (progress).
    The first job that raises stops the others and its error is raised."""
    names = list(jobs)
    deps = _check_needs(names, needs or {})
    results: dict[str, Any] = {}
    if workers <= 1:
        while len(results) < len(names):
            name = next(n for n in names if n not in results and deps[n] <= results.keys())
            results[name] = fn(jobs[name])
            if finished is not None:
                finished(name, results[name])
        return results
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = threads or threads_per_worker(workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(threads,))
    running: dict[Any, str] = {}
    try:
        while len(results) < len(names):
            for name in names:  # start ready jobs in the given order, no more than there are workers
                if len(running) < workers and name not in results and name not in running.values() \
                        and deps[name] <= results.keys():
                    running[pool.submit(_call, fn, name, jobs[name])] = name
            ended, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in ended:
                name = running.pop(future)
                results[name] = future.result()
                if finished is not None:
                    finished(name, results[name])
    except BaseException:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:  # do not wait for the other jobs' runs to end
            process.terminate()
        raise
    pool.shutdown()
    return results
