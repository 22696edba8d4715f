"""The pump: one daemon thread that waits, takes from the buffer, serializes, sends and accounts.

The pump owns the thread and the waiting; the decisions belong to the others:

- the :class:`~analytics_queue._buffer.EventBuffer` wakes it when a batch is ready;
- the :class:`~analytics_queue._delivery.DeliveryPolicy` says when to send and what an answer
  means (backoff, Retry-After, flush cuts, the stop deadline, splitting, the requeue limit);
- the :class:`~analytics_queue._ledger.Ledger` says where every event is (sequence numbers,
  in flight, the retry line) and releases ``flush()`` callers;
- the :class:`~analytics_queue.metrics.Counters` receive every attempt and every final state;
- the optional :class:`~analytics_queue._spool_keeper.SpoolKeeper` keeps events on disk: each
  batch is written before its first send and removed once acknowledged; what fails, what
  waits while PostHog is down and what is left at exit is handed over to it, and it is replayed
  oldest first. The hooks are the ``_spool_*`` methods and :meth:`Worker._put_back`.

One step (take, serialize, send, account) runs at a time under ``_send_lock``: on the worker
thread or, when no worker thread is alive in this process, on the thread that calls ``flush()``
or drains at exit. Each piece of CPU work is short: events are serialized in chunks with a GIL
hand-off between chunks, so request threads never wait behind a whole batch.

With a :class:`~analytics_queue.transport.Pipelined` transport the worker thread pipelines: while
one request waits for its answer, it takes and serializes the next batch and prepares its body
(:class:`_Ahead`), which goes out as soon as the answer came. The batch ahead is in flight in the
ledger like the one on the wire; when the answer calls for a retry, or the stop deadline passed,
it goes back to the retry line unsent. Steps on other threads (flush or exit without a worker
thread) never prepare ahead, so their deadlines hold between attempts as before.

Thread safety: every public method may be called from any thread.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from analytics_queue import _lifecycle, _multiprocessing
from analytics_queue._buffer import EventBuffer
from analytics_queue._delivery import Decision, DeliveryPolicy, Verdict
from analytics_queue._guard import guarded, inside
from analytics_queue._ledger import Batch, Ledger, Pending, Totals
from analytics_queue._spool_keeper import SpoolKeeper
from analytics_queue.errors import RefusedError
from analytics_queue.event import EventEncoder
from analytics_queue.metrics import Counters, ErrorRecord
from analytics_queue.retry import RetryPolicy
from analytics_queue.sending import Pipelined, SendResult, Transport

logger = logging.getLogger(__name__)

WORKER_NAME: Final = "analytics-queue-worker"
#: A request carries at most this many events ...
MAX_BATCH_EVENTS: Final = 500
#: ... and at most this many bytes before compression (PostHog accepts 20 MiB).
MAX_BATCH_BYTES: Final = 1024 * 1024
#: Seconds of serializing between two GIL hand-offs: a request thread that wants the GIL waits
#: at most about this long for the worker, instead of the interpreter's 5 ms switch interval.
#: (A hand-off is a zero sleep, which itself costs tens of microseconds: not after every event.)
HANDOFF_INTERVAL: Final = 0.0003
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
        self._transport = transport
        self._encoder = encoder
        self._counters = counters
        self._timeout = timeout
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
        self._send_lock = threading.Lock()
        self._ahead: _Ahead | None = None  # guarded by _send_lock
        self._handoff_at = 0.0  # perf_counter time of the next GIL hand-off (_send_lock)
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
        return thread is not None and thread.is_alive()

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
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
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
                    self._step()
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
                    self._step(deadline)
                finally:
                    self._send_lock.release()

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
            self._spool_waiting()

    def _spool_rest(self) -> None:
        """At the end of the drain: everything still held in memory goes to disk."""
        if self.spool is not None and self._send_lock.acquire(timeout=SPOOL_EXIT_RESERVE_MAX):
            try:
                self._spool_waiting()
                self.spool.close()
            finally:
                self._send_lock.release()

    def _spool_waiting(self) -> None:
        """Hand the retry line and the buffer over to the spool, a batch at a time."""
        while True:
            batch = self.ledger.take(MAX_BATCH_EVENTS)
            left: list[Pending] = []
            try:
                if not batch.open:
                    return
                left = self._put_back(batch, batch.retried + self._encode(batch))
                self.ledger.requeue(batch, left)
            finally:
                lost = self.ledger.close(batch)
                if lost:
                    self._counters.fail("internal_error", lost)
            if left:
                return  # the file refused them: they wait in memory

    def _put_back(self, batch: Batch, pendings: list[Pending]) -> list[Pending]:
        """Hand ``pendings`` to the spool when there is one; returns those left in memory."""
        if self.spool is None or not pendings:
            return pendings
        left = self.spool.keep(pendings)
        self.ledger.spill(batch, len(pendings) - len(left))
        return left

    # -- one step: take, serialize, send, account -------------------------------------------

    def _step(self, deadline: float | None = None) -> None:
        """Send one request's worth; ``deadline`` (monotonic) bounds it on a caller's thread."""
        self._handoff_at = time.perf_counter() + HANDOFF_INTERVAL  # the thread just woke
        replayed = self._spool_claim()
        batch = self.ledger.take(MAX_BATCH_EVENTS, replayed)
        self._counters.observe_queue_size(batch.open + self.buffer.qsize())
        prepared: Any = None  # a body the transport prepared ahead
        part: list[Pending] = []
        while True:
            try:
                if prepared is None:
                    part = self._serialize(batch)
                if part:
                    self._deliver(batch, part, deadline, prepared)
            except Exception:
                # A bug of ours (or of a logging filter): what the step held is counted, never
                # left uncounted, and the loop goes on.
                logger.exception("analytics worker: unexpected error while sending a batch")
                self._abandon_ahead()
            finally:
                self._close(batch)
            # The batch prepared while the last request was in flight goes next.
            ahead, self._ahead = self._ahead, None
            if ahead is None:
                return
            batch, part, prepared = ahead.batch, ahead.part, ahead.body

    def _serialize(self, batch: Batch) -> list[Pending]:
        """The events of ``batch`` to send now; those past the byte limit go to the retry line."""
        pendings = batch.replayed + batch.retried + self._encode(batch)
        part, overflow = _cut_by_bytes(pendings)
        self.ledger.requeue(batch, self._put_back(batch, overflow))
        if part and self.spool is not None:
            part = self.spool.write_ahead(part)
        return part

    def _close(self, batch: Batch) -> None:
        lost = self.ledger.close(batch)
        if lost:
            self._counters.fail("internal_error", lost)

    # -- pipelining: the next batch, serialized while a request is in flight ----------------

    def _prepare_ahead(self) -> None:
        """Take, serialize and prepare the next batch, if one is due and delivery is healthy."""
        transport = self._transport
        if (
            self._ahead is not None
            or not isinstance(transport, Pipelined)
            or threading.current_thread() is not self._thread
        ):
            return
        with self._state:
            healthy = self._policy.failures == 0
        if not healthy or not self._decide().send:
            return
        batch = self.ledger.take(MAX_BATCH_EVENTS, self._spool_claim())
        self._counters.observe_queue_size(batch.open + self.buffer.qsize())
        part: list[Pending] = []
        try:
            part = self._serialize(batch)
            if part:
                body = transport.prepare([p.data for p in part])
                self._ahead = _Ahead(batch, part, body)
                return
        except Exception:
            logger.exception("analytics worker: unexpected error while preparing a batch")
            self._abandon(batch, part)
        self._close(batch)

    def _abandon_ahead(self, *, spill: bool = False) -> None:
        """Put the batch prepared ahead back in the retry line, unsent (``spill``: hand it to
        the spool first, as at the stop deadline)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            self._abandon(ahead.batch, ahead.part, spill=spill)
            self._close(ahead.batch)

    def _abandon(self, batch: Batch, part: list[Pending], *, spill: bool = False) -> None:
        self.ledger.requeue(batch, self._put_back(batch, part) if spill else part)

    def _handoff(self) -> None:
        """A GIL hand-off, if this thread has run for HANDOFF_INTERVAL since it last waited."""
        if time.perf_counter() >= self._handoff_at:
            time.sleep(0)  # a waiting request thread runs now
            self._handoff_at = time.perf_counter() + HANDOFF_INTERVAL

    def _spool_claim(self) -> list[Pending]:
        """The oldest rows of the spool for this step (none while stopping)."""
        if self.spool is None:
            return []
        with self._state:
            if self._policy.stopping:
                return []
        return self.spool.claim(MAX_BATCH_EVENTS, MAX_BATCH_BYTES)

    def _encode(self, batch: Batch) -> list[Pending]:
        encoded: list[Pending] = []
        encode = self._encoder.encode
        refused: dict[str, int] = {}
        clock = time.perf_counter
        for seq, item in enumerate(batch.fresh, batch.first_seq):
            if clock() >= self._handoff_at:
                self._handoff()
            try:
                encoded.append(Pending(seq, encode(item), item.tracked_at))
            except RefusedError as exc:
                refused[exc.reason] = refused.get(exc.reason, 0) + 1
                logger.debug("analytics event not sent: %s", exc)
        for reason, count in refused.items():
            self._fail(batch, reason, count)
        return encoded

    def _deliver(
        self,
        batch: Batch,
        events: list[Pending],
        limit: float | None = None,
        prepared: Any = None,
    ) -> None:
        # A stack of parts: a 413 or a 400 on several events splits them in halves.
        stack = [events]
        while stack:
            part = stack.pop()
            body, prepared = prepared, None  # a prepared body belongs to the first part only
            with self._state:
                deadline = self._policy.stop_deadline
            if limit is not None:
                deadline = limit if deadline is None else min(deadline, limit)
            timeout = self._timeout
            if deadline is not None:
                timeout = min(timeout, deadline - self._monotonic())
                if timeout <= 0:
                    rest = [p for sub in (part, *reversed(stack)) for p in sub]
                    self.ledger.requeue(batch, self._put_back(batch, rest))
                    self._abandon_ahead(spill=True)
                    return
            result, seconds = self._attempt(part, timeout, body)
            verdict = DeliveryPolicy.judge(result, len(part))
            if verdict is Verdict.DELIVERED:
                now = self._clock()
                self._counters.record_send(
                    seconds=seconds,
                    delivered=len(part),
                    delivery_seconds=sum(now - p.tracked_at for p in part),
                )
                self.ledger.settle(batch, len(part))
                if self.spool is not None:
                    self.spool.ack(part)
                with self._state:
                    failures = self._policy.succeeded()
                if failures:
                    logger.info("analytics delivery recovered after %d failed attempt(s)", failures)
                continue
            self._counters.record_send(seconds=seconds, error=_error_record(result))
            if verdict is Verdict.SPLIT:
                middle = len(part) // 2
                stack.extend((part[middle:], part[:middle]))
            elif verdict is Verdict.RETRY:
                self._retry_later(batch, part, [p for sub in reversed(stack) for p in sub], result)
                return
            else:
                reason = DeliveryPolicy.rejection_reason(result)
                self._fail(batch, reason, len(part))
                if self.spool is not None:
                    self.spool.ack(part)
                logger.warning(
                    "PostHog refused %d event(s) (%s): %s", len(part), reason, result.error
                )

    def _attempt(self, part: list[Pending], timeout: float, body: Any) -> tuple[SendResult, float]:
        started = self._monotonic()
        transport = self._transport
        try:
            if isinstance(transport, Pipelined):
                prepared = body if body is not None else transport.prepare([p.data for p in part])
                self._handoff()
                request = transport.begin(prepared, timeout)
                self._prepare_ahead()  # the server works on the request meanwhile
                self._handoff()
                result = transport.finish(request)
            else:
                self._handoff()
                result = transport.send([p.data for p in part], timeout)
        except Exception as exc:  # a custom transport's bug must not lose the batch
            logger.warning("analytics transport raised; retrying", exc_info=True)
            result = SendResult(False, error=f"transport raised {type(exc).__name__}")
        self._handoff_at = time.perf_counter() + HANDOFF_INTERVAL  # the answer was waited for
        return result, self._monotonic() - started

    def _retry_later(
        self, batch: Batch, part: list[Pending], rest: list[Pending], result: SendResult
    ) -> None:
        # With a spool, the whole attempt goes to disk: nothing is dropped, no lease is held
        # through the backoff; only what the file refused follows the requeue limit.
        attempted = len(part)
        part, rest = self._put_back(batch, part), self._put_back(batch, rest)
        spooled = attempted - len(part)
        with self._state:
            again, dropped = self._policy.split_requeue(part)
            delay = self._policy.failed(self._monotonic(), result.retry_after)
            failures, stopping = self._policy.failures, self._policy.stopping
        self._fail(batch, "retry_limit", len(dropped))
        self._counters.record_retry(len(again))
        self.ledger.requeue(batch, again + rest)
        self._abandon_ahead()  # not during the backoff: the batch ahead waits in line too
        # One WARNING per outage, not one per attempt; the rest at DEBUG.
        logger.log(
            logging.WARNING if failures == 1 else logging.DEBUG,
            "sending %d analytics event(s) failed (%s); %d kept in the spool, %d will be "
            "retried %s, %d dropped (requeue_limit)",
            attempted,
            result.error,
            spooled,
            len(again),
            "before exit" if stopping else f"in {delay:.1f} s",
            len(dropped),
        )

    def _fail(self, batch: Batch, reason: str, count: int) -> None:
        if count:
            self._counters.fail(reason, count)
            self.ledger.settle(batch, count)


@dataclass(slots=True, eq=False)
class _Ahead:
    """A batch taken and serialized, its body prepared, while the previous request was in flight."""

    batch: Batch
    part: list[Pending]
    body: Any  # what the transport's prepare() returned


def _cut_by_bytes(pendings: list[Pending]) -> tuple[list[Pending], list[Pending]]:
    total = 0
    for index, pending in enumerate(pendings):
        total += len(pending.data) + 1
        if total > MAX_BATCH_BYTES and index:
            return pendings[:index], pendings[index:]
    return pendings, []


def _error_record(result: SendResult) -> ErrorRecord:
    return ErrorRecord(
        status=result.status, message=result.error or "unknown error", at=time.time()
    )
