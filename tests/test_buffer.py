"""The event buffer: bounded, closable, and a plain queue.Queue for anyone who calls get()."""

from __future__ import annotations

import queue
import threading

import pytest

from analytics_queue._buffer import BufferClosed, EventBuffer
from analytics_queue.event import QueuedEvent


def item(n: int) -> QueuedEvent:
    return QueuedEvent(f"e{n}", "u", {}, None, n, 0.0, 10)


def test_put_nowait_refuses_past_the_bound_and_after_close() -> None:
    buffer = EventBuffer(2)
    buffer.put_nowait(item(1))
    buffer.put_nowait(item(2))
    with pytest.raises(queue.Full):
        buffer.put_nowait(item(3))
    assert [e.event for e in buffer.take(10)] == ["e1", "e2"]
    buffer.close()
    with pytest.raises(BufferClosed):
        buffer.put_nowait(item(4))
    assert buffer.qsize() == 0


def test_put_nowait_sets_wake_once_a_batch_waits() -> None:
    buffer = EventBuffer(10, wake_at=2)
    buffer.put_nowait(item(1))
    assert not buffer.wake.is_set()
    buffer.put_nowait(item(2))
    assert buffer.wake.is_set()


def test_a_thread_blocked_in_get_is_woken_by_put_nowait() -> None:
    buffer = EventBuffer(10)
    got: list[QueuedEvent] = []
    waiting = threading.Event()

    def consumer() -> None:
        waiting.set()
        got.append(buffer.get(timeout=30))

    thread = threading.Thread(target=consumer)
    thread.start()
    waiting.wait(10)
    # The consumer may or may not be inside get() yet: either way it must get the event.
    buffer.put_nowait(item(1))
    thread.join(30)
    assert not thread.is_alive()
    assert [e.event for e in got] == ["e1"]
    assert buffer._getters == 0
