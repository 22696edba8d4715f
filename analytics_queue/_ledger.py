"""The ledger: where every accepted event is until it reaches a final state.

An accepted event is in exactly one place: waiting in the buffer, in flight (taken by a step of
the worker), in the retry line, final (delivered or failed, counted in the metrics by the
worker), or *spooled*: handed to the on-disk spool, which keeps it for this process or another
to send. Spooled is a state, not a failure. Events can also enter from the spool (*replayed*),
so the accounting reads ``accepted + replayed == delivered + failed + spooled + unfinished``.

Each event taken from the buffer gets a sequence number; the *low-water mark* is the
smallest number not yet final. ``flush()`` waits until the low-water mark passes the number of
events accepted before it was called, so events tracked later never delay it.

A :class:`Batch` is what one step holds. Each of its events leaves it by exactly one of
:meth:`Ledger.settle` (final), :meth:`Ledger.requeue` (back to the retry line) or
:meth:`Ledger.spill` (to the spool);
:meth:`Ledger.close` ends the batch and reports any event a bug left unaccounted.

Thread safety: one lock guards every method; the buffer's mutex is taken inside it, never the
other way round. Safe to share between threads.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from analytics_queue._buffer import EventBuffer
from analytics_queue._guard import reading
from analytics_queue.event import QueuedEvent


class Pending(NamedTuple):
    """One serialized event that is not final yet.

    ``row``: its row id in the spool once written there (None: in memory only). Events
    replayed from the spool have ``seq`` :data:`REPLAYED`: they were accepted elsewhere.
    """

    seq: int
    data: bytes
    tracked_at: float
    row: int | None = None


#: The sequence number of an event taken from the spool.
REPLAYED: Final = -1


@dataclass(slots=True, eq=False)
class Batch:
    """What one step took: events from the retry line (serialized) and from the buffer (not yet),
    and events replayed from the spool (serialized, oldest of all).

    ``first_seq`` is the sequence number of ``fresh[0]``; ``open`` counts the events still held.
    """

    retried: list[Pending]
    fresh: list[QueuedEvent]
    first_seq: int
    low: int
    replayed: list[Pending] = field(default_factory=list)
    open: int = field(init=False)
    oldest_tracked_at: float | None = field(init=False)

    def __post_init__(self) -> None:
        self.open = len(self.replayed) + len(self.retried) + len(self.fresh)
        stamps = [events[0].tracked_at for events in (self.retried, self.fresh) if events]
        self.oldest_tracked_at = min(stamps) if stamps else None


class Totals(NamedTuple):
    """Events ever accepted, those not final yet (waiting, in flight, retry line), those handed
    to the spool and those taken from it: ``accepted + replayed == final + spooled + unfinished``.
    """

    accepted: int
    unfinished: int
    spooled: int = 0
    replayed: int = 0


class PendingWork(NamedTuple):
    """What the worker has to send: the count, whether a retry waits, the oldest tracked_at."""

    events: int
    retrying: bool
    oldest_tracked_at: float | None


class Ledger:
    """Sequence numbers, the retry line, what is in flight, and the flush waiters.

    Args:
        buffer: the queue ``track()`` puts on; the ledger takes from it.
    """

    def __init__(self, buffer: EventBuffer) -> None:
        self._buffer = buffer
        self._lock = threading.Lock()
        self._taken = 0
        self._retry: deque[Pending] = deque()
        self._in_flight: dict[Batch, None] = {}
        self._in_flight_count = 0
        self._waiters: list[tuple[int, threading.Lock]] = []
        self._spooled = 0
        self._replayed = 0

    # -- reads ------------------------------------------------------------------------------

    def totals(self) -> Totals:
        with reading(self._lock):
            waiting = self._buffer.qsize()
            return Totals(
                self._taken + waiting,
                waiting + len(self._retry) + self._in_flight_count,
                self._spooled,
                self._replayed,
            )

    def pending(self) -> PendingWork:
        """What waits to be sent (in the buffer and the retry line)."""
        with self._lock:
            state = self._buffer.state()
            oldest = self._retry[0].tracked_at if self._retry else state.oldest_tracked_at
            return PendingWork(state.waiting + len(self._retry), bool(self._retry), oldest)

    def oldest_unfinished(self) -> float | None:
        """When the oldest event not yet final was tracked (wall clock); None when none is."""
        with reading(self._lock):
            stamps = [batch.oldest_tracked_at for batch in self._in_flight]
            if self._retry:
                stamps.append(self._retry[0].tracked_at)
            stamps.append(self._buffer.state().oldest_tracked_at)
            known = [stamp for stamp in stamps if stamp is not None]
            return min(known) if known else None

    def flush_target(self) -> int | None:
        """The sequence number a flush called now waits for; None when nothing is unfinished."""
        with self._lock:
            target = self._taken + self._buffer.qsize()
            return None if self._low_water() >= target else target

    def reached(self, target: int) -> bool:
        with self._lock:
            return self._low_water() >= target

    def _low_water(self) -> int:
        low = self._taken
        if self._retry:
            low = min(low, self._retry[0].seq)
        for batch in self._in_flight:
            low = min(low, batch.low)
        return low

    # -- flush waiters ----------------------------------------------------------------------

    def add_waiter(self, target: int) -> threading.Lock | None:
        """A held lock that is released once ``target`` is reached (or :meth:`wake_waiters`).

        The caller waits with ``acquire(timeout=...)``, holding none of the ledger's locks, so
        a signal handler that ends the process can interrupt the wait safely. None: reached.
        """
        with self._lock:
            if self._low_water() >= target:
                return None
            waiter = threading.Lock()
            waiter.acquire()
            self._waiters.append((target, waiter))
            return waiter

    def remove_waiter(self, waiter: threading.Lock | None) -> None:
        with self._lock:
            self._waiters = [(t, w) for t, w in self._waiters if w is not waiter]

    def wake_waiters(self) -> None:
        """Release every flush waiter (the worker is ending): each checks for itself."""
        with self._lock:
            for _, waiter in self._waiters:
                if waiter.locked():
                    waiter.release()

    def _release_reached(self) -> None:
        low = self._low_water()
        for target, waiter in self._waiters:
            if target <= low and waiter.locked():
                waiter.release()

    # -- one step's events ------------------------------------------------------------------

    def take(self, limit: int, replayed: list[Pending] | None = None) -> Batch:
        """Take up to ``limit`` events: ``replayed`` (taken from the spool by the caller) first,
        then the retry line, then the buffer."""
        replayed = replayed or []
        with self._lock:
            self._replayed += len(replayed)
            limit -= len(replayed)
            retried = [self._retry.popleft() for _ in range(min(len(self._retry), limit))]
            fresh = self._buffer.take(limit - len(retried))
            first = self._taken
            self._taken += len(fresh)
            low = retried[0].seq if retried else first
            batch = Batch(retried, fresh, first, low, replayed)
            if batch.open:
                self._in_flight[batch] = None
                self._in_flight_count += batch.open
            return batch

    def settle(self, batch: Batch, count: int) -> None:
        """``count`` events of ``batch`` reached a final state (delivered or failed)."""
        with self._lock:
            self._leave(batch, count)

    def requeue(self, batch: Batch, pendings: list[Pending]) -> None:
        """Put ``pendings`` of ``batch`` back at the head of the retry line, in sequence order."""
        if not pendings:
            return
        with self._lock:
            self._leave(batch, len(pendings))
            if not self._retry or pendings[-1].seq < self._retry[0].seq:
                self._retry.extendleft(reversed(pendings))
            else:  # two batches in flight came back out of order: keep the line sorted
                self._retry = deque(sorted([*pendings, *self._retry]))

    def spill(self, batch: Batch, count: int) -> None:
        """``count`` events of ``batch`` were handed to the spool: kept there, not in memory."""
        if count:
            with self._lock:
                self._leave(batch, count)
                self._spooled += count

    def close(self, batch: Batch) -> int:
        """End ``batch``; returns how many of its events were left unaccounted (a bug)."""
        with self._lock:
            lost = batch.open
            self._leave(batch, lost)
            self._in_flight.pop(batch, None)
            self._release_reached()
            return lost

    def _leave(self, batch: Batch, count: int) -> None:
        batch.open -= count
        self._in_flight_count -= count
