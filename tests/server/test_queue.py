"""The inference queue: one worker, bounded, first-class jobs ahead of waiting ones, clean stop."""
from __future__ import annotations

import threading

import pytest

from ichdet.errors import InputError
from ichdet.server.queue import InferenceQueue, QueueFull


def _blocked_queue(capacity: int) -> tuple[InferenceQueue, threading.Event, list[str]]:
    """A queue whose worker is busy with a job that waits for the returned event."""
    q, gate, ran = InferenceQueue(capacity), threading.Event(), []
    started = threading.Event()

    def hold() -> None:
        started.set()
        gate.wait(10)

    q.submit(hold)
    assert started.wait(10)
    return q, gate, ran


def test_order_priority_and_capacity():
    q, gate, ran = _blocked_queue(4)
    futures = [q.submit(ran.append, "predict-1"), q.submit(ran.append, "predict-2"),
               q.submit_first(ran.append, "overlay-1"), q.submit_first(ran.append, "overlay-2")]
    assert q.pending == 4 and q.full()
    with pytest.raises(QueueFull, match=r"^inference queue is full \(4 waiting\); try again shortly$"):
        q.submit(ran.append, "one too many")
    gate.set()
    for f in futures:
        f.result(10)
    assert ran == ["overlay-1", "overlay-2", "predict-1", "predict-2"]  # overlays first, each kind in order
    q.stop()


def test_errors_reach_the_caller():
    q = InferenceQueue(2)
    with pytest.raises(ZeroDivisionError):
        q.submit(lambda: 1 / 0).result(10)
    assert q.submit(lambda: "still working").result(10) == "still working"
    q.stop()


def test_stop_cancels_the_waiting_and_lets_the_running_finish():
    q, gate, ran = _blocked_queue(2)
    waiting = [q.submit(ran.append, "a"), q.submit_first(ran.append, "b")]
    threading.Timer(0.2, gate.set).start()  # the running job ends after stop() has drained the queue
    q.stop()
    assert all(f.cancelled() for f in waiting) and ran == []
    assert q._thread is not None and not q._thread.is_alive()


def test_capacity_must_be_positive():
    with pytest.raises(InputError, match="^the inference queue needs a capacity of at least 1, got 0$"):
        InferenceQueue(0)
