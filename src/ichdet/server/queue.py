"""The inference queue: one worker thread runs every piece of model work, in order.

Reading an upload, preparing it, the model and Grad-CAM all run on this one thread, fed through a
bounded `queue.Queue`: at most `capacity` jobs wait behind the one that runs, and a job offered
to a full queue is refused at once (`QueueFull`, which the app answers with 503) rather than
queued without bound or given a thread of its own. Callers get a `concurrent.futures.Future`;
async endpoints await it with `asyncio.wrap_future`, so no thread waits per request. Jobs sent
with `submit_first` (what a reader waits on while looking: Grad-CAM overlays) run before the
waiting `submit` jobs (whole-scan predictions), in their own arrival order.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable

from ichdet.errors import InputError

log = logging.getLogger("ichdet.server")

FIRST, NORMAL, STOP = 0, 1, 2  # job priorities: lower runs sooner


class QueueFull(Exception):
    """The queue holds `capacity` waiting jobs; the request should be retried later."""

    def __init__(self, waiting: int):
        super().__init__(f"inference queue is full ({waiting} waiting); try again shortly")
        self.waiting = waiting


class QueueStopped(RuntimeError):
    """The queue was stopped (the server is shutting down)."""


class InferenceQueue:
    """`submit(fn, *args)` -> Future of `fn(*args)`, run on the worker thread (started on first use)."""

    def __init__(self, capacity: int):
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise InputError(f"the inference queue needs a capacity of at least 1, got {capacity!r}")
        self.capacity = capacity
        self._jobs: queue.PriorityQueue = queue.PriorityQueue(capacity)  # (priority, arrival, job)
        self._arrival = itertools.count()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def pending(self) -> int:
        """Jobs waiting (not counting the one running)."""
        return self._jobs.qsize()

    def full(self) -> bool:
        return self._jobs.full()

    def start(self) -> None:
        with self._lock:
            if self._stopped:
                raise QueueStopped("the inference queue is stopped")
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="ichdet-inference", daemon=True)
                self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Queue `fn(*args, **kwargs)`; raises QueueFull when `capacity` jobs already wait."""
        return self._put(NORMAL, fn, args, kwargs)

    def submit_first(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """As `submit`, but ahead of every waiting `submit` job."""
        return self._put(FIRST, fn, args, kwargs)

    def _put(self, priority: int, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Future:
        self.start()
        future: Future = Future()
        try:
            self._jobs.put_nowait((priority, next(self._arrival), (future, fn, args, kwargs)))
        except queue.Full:
            raise QueueFull(self._jobs.qsize()) from None
        return future

    def _work(self) -> None:
        while True:
            _, _, job = self._jobs.get()
            if job is None:
                return
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue  # its caller went away before it started
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
                future.set_exception(e)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel the waiting jobs, let the running one finish (up to `timeout` s), end the worker."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        while True:
            try:
                _, _, job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        if thread is not None and thread.is_alive():
            try:
                self._jobs.put((STOP, next(self._arrival), None), timeout=timeout)
            except queue.Full:
                pass
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the inference worker did not stop within %.0f s", timeout)
