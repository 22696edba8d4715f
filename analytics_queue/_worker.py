"""The pump: one daemon thread that waits, then has one step at a time sent.

The pump owns the thread and the waiting; the work and the decisions belong to the others:

- the :class:`~analytics_queue._buffer.EventBuffer` wakes it when a batch is ready;
- the :class:`~analytics_queue._delivery.DeliveryPolicy` says when to send and what an answer
  means (backoff, Retry-After, flush cuts, the stop deadline, splitting, the requeue limit);
- the :class:`~analytics_queue._ledger.Ledger` says where every event is (sequence numbers,
  in flight, the retry line) and releases ``flush()`` callers;
- the :class:`~analytics_queue._sender.Sender` does one step: take, serialize, send, account
  (pipelining the next batch on the worker thread);
- the optional :class:`~analytics_queue._spool_keeper.SpoolKeeper` keeps events on disk; the
  pump's ``_spool_*`` methods say when (before resting, while PostHog is down, at the end).

One step runs at a time under ``_send_lock``: on the worker thread or, when no worker thread is
alive in this process, on the thread that calls ``flush()`` or drains at exit (those steps never
prepare a batch ahead, so their deadlines hold between attempts).

Thread safety: every public method may be called from any thread.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from analytics_queue import _lifecycle, _multiprocessing
from analytics_queue._buffer import EventBuffer
from analytics_queue._delivery import Decision, DeliveryPolicy
from analytics_queue._guard import guarded, inside
from analytics_queue._ledger import Ledger, Totals
from analytics_queue._sender import Sender
from analytics_queue.event import EventEncoder
from analytics_queue.metrics import Counters
from analytics_queue.retry import RetryPolicy
from analytics_queue.sending import Transport

if TYPE_CHECKING:  # the spool (and SQLite) load only with spool_path
    from analytics_queue._spool_keeper import SpoolKeeper

logger = logging.getLogger(__name__)

WORKER_NAME: Final = "analytics-queue-worker"
#: How long the worker rests after an unexpected error in its loop.
ERROR_PAUSE: Final = 1.0
#: With a spool, while backing off, what waits in the buffer goes to disk this often, seconds:
#: the buffer never fills during an outage.
SPOOL_WHILE_DOWN_EVERY: Final = 0.25
#: With a spool, this share of the exit budget (at most SPOOL_EXIT_RESERVE_MAX seconds) is kept
#: for writing what is left to disk.
SPOOL_EXIT_RESERVE: Final = 0.2
SPOOL_EXIT_RESERVE_MAX: Final = 1.0


class Worker:
    """Batches and sends what ``track()`` queued.

    Args:
        buffer: the queue ``track()`` puts on.
        transport: sends one batch.
        encoder: serializes one queued event.
        counters: where delivery figures go.
        batch_size: send as soon as this many events wait.
        flush_interval: send at most this long after the oldest waiting event was tracked.
        requeue_limit: after a retryable failure, this many events of the batch go again
            (None: all of them).
        timeout: seconds for one HTTP attempt.
        shutdown_timeout: this worker's share of the exit budget, seconds.
        retry_policy: the backoff between failed attempts.
        rng: the random source for backoff jitter.
        clock: wall-clock seconds (``time.time``): the clock of ``tracked_at``.
        monotonic: the clock of deadlines and backoff.
        spool: keeps events on disk (None: memory only).
    """

    def __init__(
        self,
        buffer: EventBuffer,
        transport: Transport,
        encoder: EventEncoder,
        counters: Counters,
        *,
        batch_size: int,
        flush_interval: float,
        requeue_limit: int | None,
        timeout: float,
        shutdown_timeout: float = 5.0,
        retry_policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        spool: SpoolKeeper | None = None,
    ) -> None:
        self.buffer = buffer
        self.spool = spool
        self.ledger = Ledger(buffer)
        self._policy = DeliveryPolicy(
            batch_size=batch_size,
            flush_interval=flush_interval,
            requeue_limit=requeue_limit,
            retry_policy=retry_policy,
            rng=rng,
        )
        self.shutdown_timeout = shutdown_timeout
        self._clock = clock
        self._monotonic = monotonic
        #: The process this worker belongs to: after a fork without Python's hooks the child
        #: still holds it, but must neither wait for it nor count its events.
        self.pid = os.getpid()

        self.wake = buffer.wake  # set by put() once a batch waits, and by flush and stop
        # Set only by flush() and stop: what a pump waiting out a backoff listens to, so that
        # track() calls during an outage do not wake it for nothing.
        self._interrupt = threading.Event()
        self._state = threading.Lock()  # guards _policy
        self._send_lock = threading.Lock()  # one step at a time
        self._sender = Sender(
            self.ledger,
            self._policy,
            self._state,
            transport,
            encoder,
            counters,
            buffer,
            timeout=timeout,
            clock=clock,
            monotonic=monotonic,
            spool=spool,
        )
        self._thread: threading.Thread | None = None
        self._start_failed = False

    # -- state read from any thread ---------------------------------------------------------

    def totals(self) -> Totals:
        """(events ever accepted, events not yet final), read consistently."""
        with guarded():
            return self.ledger.totals()

    @property
    def alive(self) -> bool:
        """True when the worker thread runs in this process."""
        thread = self._thread
        if thread is None:
            return False
        # Guarded: an exception raised by a signal handler inside is_alive() (or join()) makes
        # CPython 3.11 release the running thread's state lock and mark it stopped.
        with guarded():
            return thread.is_alive()

    @property
    def started(self) -> bool:
        """True once a start was attempted (whether or not it succeeded)."""
        return self._thread is not None or self._start_failed

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the daemon thread; never raises (at interpreter exit threads cannot start)."""
        if self.started:
            return
        thread = threading.Thread(target=self._run, name=WORKER_NAME, daemon=True)
        # Held by the exit drain while it may hold events, even if its client is collected.
        _lifecycle.keep(self)
        _multiprocessing.register_exit_drain()  # multiprocessing children skip atexit
        try:
            thread.start()
        except RuntimeError as exc:
            self._start_failed = True
            with guarded():
                logger.warning(
                    "cannot start the analytics worker thread (%s); events are sent by "
                    "flush() and at exit on the calling thread",
                    exc,
                )
            return
        self._thread = thread

    def begin_stop(self, deadline: float) -> None:
        """Close admission, then send what waits until ``deadline`` (monotonic) and end.

        Closing comes first: no ``track()`` can queue an event after this drain began.
        """
        with guarded():
            self.buffer.close()
            if self.spool is not None:  # keep time to write what is left to disk
                budget = max(0.0, deadline - self._monotonic())
                deadline -= min(SPOOL_EXIT_RESERVE_MAX, budget * SPOOL_EXIT_RESERVE)
            with self._state:
                self._policy.stop(deadline, self._monotonic())
            self._interrupt.set()  # inside: Event.set takes a lock a signal must not split
            self.wake.set()

    def wait_stopped(self, deadline: float) -> bool:
        """Wait for the drain started by :meth:`begin_stop`; True when nothing is left."""
        thread = self._thread
        if self.alive and thread is not None and thread is not threading.current_thread():
            with guarded():  # see alive: a signal must not interrupt join() either
                thread.join(max(0.0, deadline - self._monotonic()))
        else:
            self._run_here(deadline, target=None)
            self._spool_rest()
        return self.totals().unfinished == 0

    def flush(self, deadline: float) -> bool:
        """Wait until every event accepted before this call reached a final state.

        Returns False when ``deadline`` (monotonic) passed first. Sends on the calling thread
        when no worker thread is alive.
        """
        with guarded():
            target = self.ledger.flush_target()
            if target is None:
                return True
            with self._state:
                token = self._policy.flush_started()
        waiter = None
        try:
            with guarded():
                self._interrupt.set()
                self.wake.set()
            if not self.alive:
                return self._run_here(deadline, target)
            with guarded():
                waiter = self.ledger.add_waiter(target)
            if waiter is not None:
                # Outside every guarded section: a signal may end the process here safely.
                waiter.acquire(timeout=max(0.0, deadline - self._monotonic()))
            if self.ledger.reached(target):
                return True
            if not self.alive and deadline > self._monotonic():
                return self._run_here(deadline, target)
            return False
        finally:
            with guarded():
                self.ledger.remove_waiter(waiter)
                with self._state:
                    self._policy.flush_ended(token)

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        inside.active = True  # this thread never tracks: our log lines cannot loop back
        try:
            self._loop()
        finally:
            self.ledger.wake_waiters()
            if self.ledger.totals().unfinished == 0:
                # Held otherwise: a stop that ran out of time leaves events that the exit
                # drain sends on the main thread.
                _lifecycle.release(self)

    def _loop(self) -> None:
        while True:
            try:
                self.wake.clear()
                self._interrupt.clear()
                decision = self._decide()
                if decision.stop:
                    self._spool_rest()
                    return
                if not decision.send:
                    if self.spool is not None:
                        self._spool_before_wait()
                    if decision.backing_off and self.spool is not None:
                        self._spool_while_down(decision.seconds)
                        continue
                    (self._interrupt if decision.backing_off else self.wake).wait(decision.seconds)
                    continue
                with self._send_lock:
                    self._sender.step(may_prepare_ahead=self._due)
            except Exception:
                logger.exception("analytics worker: unexpected error; resting, then going on")
                self.wake.wait(ERROR_PAUSE)

    def _run_here(self, deadline: float, target: int | None) -> bool:
        """Send on the calling thread until ``target`` (or everything) is final or ``deadline``."""
        try:
            return self._run_here_steps(deadline, target)
        finally:
            if self.spool is not None:
                self.spool.settle()  # delete what was delivered before returning

    def _run_here_steps(self, deadline: float, target: int | None) -> bool:
        pause = threading.Event()
        with guarded():
            while True:
                if target is not None and self.ledger.reached(target):
                    return True
                now = self._monotonic()
                if now >= deadline:
                    return False
                decision = self._decide()
                if decision.stop:
                    return self.totals().unfinished == 0
                if not decision.send and self.ledger.pending().events == 0:
                    # Nothing waits, yet the target is not final: another thread's step holds
                    # it. Wait for that step to end instead of for the flush interval.
                    if self._send_lock.acquire(timeout=max(0.0, deadline - now)):
                        self._send_lock.release()
                    if target is None:
                        return self.totals().unfinished == 0
                    continue
                if not decision.send:
                    pause.wait(min(decision.seconds, deadline - now))
                    continue
                if not self._send_lock.acquire(timeout=max(0.0, deadline - now)):
                    return False
                try:
                    self._sender.step(deadline)
                finally:
                    self._send_lock.release()

    def _due(self) -> bool:
        """True when a send is due now (asked while a request is in flight, to prepare ahead)."""
        return self._decide().send

    def _decide(self) -> Decision:
        work = self.ledger.pending()
        pending, retrying = work.events, work.retrying
        with self._state:
            stopping = self._policy.stopping
        if self.spool is not None and not stopping:
            replay = self.spool.waiting()  # rows on disk go as soon as sending is allowed
            pending, retrying = pending + replay, retrying or replay > 0
        oldest = work.oldest_tracked_at
        age = None if oldest is None else self._clock() - oldest
        now = self._monotonic()
        with self._state:
            return self._policy.decide(now, pending=pending, retrying=retrying, oldest_age=age)

    # -- the spool's hooks ------------------------------------------------------------------

    def _spool_before_wait(self) -> None:
        """Before the pump rests with nothing to send, delete the rows of what was delivered.

        While events wait, the next write-ahead deletes them in its own transaction instead.
        """
        assert self.spool is not None
        if self.ledger.pending().events == 0:
            with self._send_lock:
                self.spool.settle()

    def _spool_while_down(self, seconds: float) -> None:
        """While backing off: wait a little, then move what waits in the buffer to disk."""
        self._interrupt.wait(min(seconds, SPOOL_WHILE_DOWN_EVERY))
        with self._send_lock:
            self._sender.spool_waiting()

    def _spool_rest(self) -> None:
        """At the end of the drain: everything still held in memory goes to disk."""
        if self.spool is not None and self._send_lock.acquire(timeout=SPOOL_EXIT_RESERVE_MAX):
            try:
                self._sender.spool_waiting()
                self.spool.close()
            finally:
                self._send_lock.release()
