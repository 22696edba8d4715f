"""EventBuffer: the bounded ``queue.Queue`` between ``track()`` and the worker.

A subclass of the standard library's class (even where gevent or eventlet replaced
``queue.Queue``: see :mod:`analytics_queue._green`), so that admission, the byte bound and
closing happen in the one step the queue already takes under its own mutex: ``put_nowait``
either queues an event before the buffer is closed, or raises :class:`BufferClosed`. No event
can slip in after :meth:`EventBuffer.close`, so a drain that starts after it sees everything it
must account for.

The worker never blocks in ``get()``: it waits on :attr:`EventBuffer.wake`, which a ``put`` sets
once ``wake_at`` events wait, and takes what waits in bulk with :meth:`EventBuffer.take`.

Thread safety: every method holds the queue's mutex; safe to share between threads.
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, NamedTuple

from analytics_queue import _green
from analytics_queue._guard import reading
from analytics_queue.event import QueuedEvent

if TYPE_CHECKING:
    _StdQueue = queue.Queue
else:  # the standard library's class even where gevent or eventlet replaced queue.Queue
    _StdQueue = _green.queue_class()


class BufferClosed(Exception):
    """Raised by ``put_nowait`` once the buffer is closed."""


class BufferBytesFull(queue.Full):
    """Raised by ``put_nowait`` when the event would take the buffer past its byte bound."""


class BufferState(NamedTuple):
    """What waits in the buffer: how many events, and the wall time the oldest was tracked."""

    waiting: int
    oldest_tracked_at: float | None


class EventBuffer(_StdQueue[QueuedEvent]):
    """A bounded FIFO of queued events that can be closed.

    Args:
        maxsize: at most this many events wait; ``put_nowait`` raises ``queue.Full`` past it.
        max_bytes: at most about this many bytes wait (the events' size estimates); None: no
            byte bound. One event is always accepted into an empty buffer.
        wake_at: set :attr:`wake` when this many events wait.
    """

    def __init__(self, maxsize: int, *, max_bytes: int | None = None, wake_at: int = 1) -> None:
        super().__init__(maxsize)
        if _green.patched_by() is not None:
            # gevent's Lock has no _is_owned, so every put's notify() would probe it with an
            # acquire followed by a yield to the hub: an RLock answers _is_owned itself.
            mutex = threading.RLock()
            self.mutex = mutex  # type: ignore[assignment]
            self.not_empty = threading.Condition(mutex)
            self.not_full = threading.Condition(mutex)
            self.all_tasks_done = threading.Condition(mutex)
        self.wake = threading.Event()
        self._wake_at = wake_at
        self._max_bytes = max_bytes
        self._bytes = 0
        self._closed = False
        self._getters = 0  # threads blocked in get(): nobody, unless a caller uses get()

    def put_nowait(self, item: QueuedEvent) -> None:
        """Queue ``item`` or raise ``queue.Full``, ``BufferBytesFull`` or ``BufferClosed``.

        ``Queue.put`` without its blocking branches, and without notifying ``get()`` callers
        when there are none (the worker takes with :meth:`take`): the cost of ``track()``.
        """
        with self.mutex:
            if 0 < self.maxsize <= len(self.queue):
                raise queue.Full
            self._put(item)
            self.unfinished_tasks += 1
            if self._getters:
                self.not_empty.notify()

    def get(self, block: bool = True, timeout: float | None = None) -> QueuedEvent:
        with self.mutex:
            self._getters += 1
        try:
            return super().get(block, timeout)
        finally:
            with self.mutex:
                self._getters -= 1

    # Called by Queue.put under the mutex, after the count bound was checked.
    def _put(self, item: QueuedEvent) -> None:
        if self._closed:
            raise BufferClosed
        if self._max_bytes is not None:
            if self._bytes + item.size > self._max_bytes and self.queue:
                raise BufferBytesFull
            self._bytes += item.size
        self.queue.append(item)
        if len(self.queue) >= self._wake_at and not self.wake.is_set():
            self.wake.set()

    def take(self, limit: int) -> list[QueuedEvent]:
        """Remove and return up to ``limit`` events, oldest first."""
        with self.mutex:
            waiting = self.queue
            items = [waiting.popleft() for _ in range(min(len(waiting), limit))]
            if items:
                if self._max_bytes is not None:
                    self._bytes -= sum(item.size for item in items)
                self.not_full.notify(len(items))
        return items

    def qsize(self) -> int:
        """How many events wait (see :func:`~analytics_queue._guard.reading`)."""
        with reading(self.mutex):
            return len(self.queue)

    def state(self) -> BufferState:
        """How many events wait and when the oldest was tracked."""
        with reading(self.mutex):
            waiting = self.queue
            return BufferState(len(waiting), waiting[0].tracked_at if waiting else None)

    def close(self) -> None:
        """Refuse every later ``put``; what already waits stays to be drained."""
        with self.mutex:
            self._closed = True

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def bytes_waiting(self) -> int:
        """The size estimates of the waiting events, summed (0 without a byte bound)."""
        return self._bytes
