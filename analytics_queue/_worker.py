"""The consumer side of the queue: one daemon thread that batches, sends, retries and drains.

The worker never blocks in ``Queue.get()`` (every ``put`` would then wake it, which triples the
caller's cost): it waits on an Event with a timeout and takes everything waiting in bulk under the
queue's own mutex. ``track()`` sets the Event only when the queue reaches ``batch_size``; an idle
worker wakes once per ``flush_interval`` to see whether the oldest event is due.

Every event taken from the queue gets a sequence number. ``flush()`` records the number of events
queued when it was called and waits until every event below it reached a final state (delivered or
failed), so events tracked after the call never delay it.

Each piece of CPU work on the worker is short: events are serialized in chunks with a GIL hand-off
between chunks, so request threads never wait behind a whole batch.

Thread safety: ``flush``, ``begin_stop``, ``wait_stopped`` and the read-only properties may be
called from any thread. One step (take, serialize, send, account) runs at a time under
``_send_lock``, on the worker thread or, when no worker is alive, on the caller's thread.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from analytics_queue import _lifecycle, _multiprocessing
from analytics_queue.errors import RefusedError
from analytics_queue.event import EventEncoder, QueuedEvent
from analytics_queue.metrics import Counters, ErrorRecord
from analytics_queue.retry import RetryPolicy, is_retryable
from analytics_queue.transport import SendResult, Transport

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
#: The pause between failed attempts while shutting down or draining on a caller's thread,
#: where backoff is cut short but a dead server must not turn the loop into a busy spin.
DRAIN_PAUSE: Final = 0.1
#: How long the worker rests after an unexpected error in its loop.
ERROR_PAUSE: Final = 1.0


class _Reentry(threading.local):
    """Per-thread flag: True while analytics_queue's own code may log on this thread."""

    active = False


#: track() refuses to run where this is set, so a logging handler that tracks events can never
#: loop back into the queue from our own log lines (the worker thread sets it for good).
reentry = _Reentry()


class _Pending:
    """One serialized event not yet in a final state."""

    __slots__ = ("data", "seq", "tracked_at")

    def __init__(self, seq: int, data: bytes, tracked_at: float) -> None:
        self.seq = seq
        self.data = data
        self.tracked_at = tracked_at


def _hand_off_gil() -> None:
    # A zero sleep releases the GIL long enough for a waiting thread to take it, instead of
    # that thread waiting out the interpreter's 5 ms switch interval.
    time.sleep(0)


class Worker:
    """Batches and sends what ``track()`` queued.

    Args:
        events: the queue ``track()`` puts on; the worker takes from it under its mutex.
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
    """

    def __init__(
        self,
        events: queue.Queue[QueuedEvent],
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
    ) -> None:
        self._events = events
        self._transport = transport
        self._encoder = encoder
        self._counters = counters
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._requeue_limit = requeue_limit
        self._timeout = timeout
        self.shutdown_timeout = shutdown_timeout
        self._policy = retry_policy or RetryPolicy()
        self._rng = rng or random.Random()
        self._clock = clock
        self._monotonic = monotonic

        self.wake = threading.Event()
        # Set only by flush() and shutdown: what a worker waiting out a backoff listens to, so
        # that track() calls during an outage do not wake it for nothing.
        self._interrupt = threading.Event()
        self._cond = threading.Condition(threading.Lock())
        self._send_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._start_failed = False

        # Guarded by _cond (the queue's mutex is taken inside it, never the other way round).
        self._taken = 0
        self._retry: deque[_Pending] = deque()
        self._in_flight = 0
        self._in_flight_low = 0
        self._flush_waiters = 0
        self._stopping = False
        self._stop_deadline = 0.0
        self._failures = 0
        self._flush_started_at = 0.0
        self._cut_for = 0.0  # the flush whose backoff was last cut short
        self._not_before = 0.0
        self._retry_after_until = 0.0
        self._settled = 0  # events of the current step already accounted; under _send_lock

    # -- state read from any thread ---------------------------------------------------------

    def totals(self) -> tuple[int, int]:
        """(events ever queued, events not yet final), read consistently."""
        with self._cond, self._events.mutex:
            waiting = len(self._events.queue)
            return self._taken + waiting, waiting + len(self._retry) + self._in_flight

    @property
    def alive(self) -> bool:
        """True when the worker thread runs in this process."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def started(self) -> bool:
        """True once a start was attempted (whether or not it succeeded)."""
        return self._thread is not None or self._start_failed

    def _low_water(self) -> int:
        # The smallest sequence number that is not final yet. Caller holds _cond.
        low = self._taken
        if self._retry:
            low = min(low, self._retry[0].seq)
        if self._in_flight:
            low = min(low, self._in_flight_low)
        return low

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
            with _guarded():
                logger.warning(
                    "cannot start the analytics worker thread (%s); events are sent by "
                    "flush() and at exit on the calling thread",
                    exc,
                )
            return
        self._thread = thread

    def begin_stop(self, deadline: float) -> None:
        """Ask the worker to send everything it can before ``deadline`` (monotonic), then end."""
        with self._cond:
            self._stopping = True
            self._stop_deadline = deadline
        self._interrupt.set()
        self.wake.set()

    def wait_stopped(self, deadline: float) -> bool:
        """Wait for the drain started by :meth:`begin_stop`; True when nothing is left."""
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - self._monotonic()))
        else:
            self._drain_on_caller(deadline, honour_retry_after=False)
        return self.totals()[1] == 0

    # -- flush ------------------------------------------------------------------------------

    def flush(self, deadline: float) -> bool:
        """Wait until every event queued before this call reached a final state.

        Returns False when ``deadline`` (monotonic) passed first.
        """
        with self._cond:
            target = self._taken + len(self._events.queue)
            if self._low_water() >= target:
                return True
            self._flush_waiters += 1
            self._flush_started_at = self._monotonic()
        try:
            self._interrupt.set()
            self.wake.set()
            if not self.alive:
                return self._drain_on_caller(deadline, honour_retry_after=True, target=target)
            with self._cond:
                while self._low_water() < target:
                    remaining = deadline - self._monotonic()
                    if remaining <= 0 or not self.alive:
                        break
                    self._cond.wait(remaining)
                done = self._low_water() >= target
            if not done and not self.alive and deadline > self._monotonic():
                return self._drain_on_caller(deadline, honour_retry_after=True, target=target)
            return done
        finally:
            with self._cond:
                self._flush_waiters -= 1

    def _drain_on_caller(
        self, deadline: float, *, honour_retry_after: bool, target: int | None = None
    ) -> bool:
        """Send on the calling thread until done or ``deadline``; used when no worker runs."""
        pause = threading.Event()
        with _guarded():
            while True:
                now = self._monotonic()
                with self._cond:
                    low = self._low_water()
                    pending = len(self._retry) + len(self._events.queue)
                    retry_after_until = self._retry_after_until
                if (target is not None and low >= target) or pending == 0:
                    return True
                if now >= deadline:
                    return False
                if honour_retry_after and now < retry_after_until:
                    if retry_after_until >= deadline:
                        pause.wait(deadline - now)
                        return False
                    pause.wait(retry_after_until - now)
                    continue
                if not self._send_lock.acquire(timeout=max(0.0, deadline - now)):
                    return False
                try:
                    failed = self._step(deadline)
                finally:
                    self._send_lock.release()
                if failed:
                    now = self._monotonic()
                    with self._cond:
                        rest = self._not_before - now if honour_retry_after else DRAIN_PAUSE
                    pause.wait(max(0.0, min(rest, deadline - now)))

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        reentry.active = True  # this thread never tracks: our log lines cannot loop back
        try:
            self._loop()
        finally:
            _lifecycle.release(self)

    def _loop(self) -> None:
        while True:
            try:
                self.wake.clear()
                self._interrupt.clear()
                wait, backing_off = self._next_wait()
                if wait is None:
                    return
                if wait > 0:
                    (self._interrupt if backing_off else self.wake).wait(wait)
                    continue
                with self._send_lock:
                    deadline = self._stop_deadline if self._stopping else None
                    failed = self._step(deadline)
                if failed and self._stopping:
                    self.wake.wait(DRAIN_PAUSE)
            except Exception:
                logger.exception("analytics worker: unexpected error; resting, then going on")
                self.wake.wait(ERROR_PAUSE)

    def _next_wait(self) -> tuple[float | None, bool]:
        """(0 to send now, seconds to wait, or None to end the thread; backing off)."""
        now = self._monotonic()
        with self._cond, self._events.mutex:
            waiting = len(self._events.queue)
            pending = waiting + len(self._retry)
            if self._stopping:
                if pending == 0 or now >= self._stop_deadline:
                    self._cond.notify_all()
                    return None, False
                return 0.0, False
            if pending == 0:
                return self._flush_interval, False
            if now < self._not_before:
                # flush() cuts a backoff short once per call, never a Retry-After; a failure
                # after that backs off again, so a dead server is not hammered.
                cut = self._flush_waiters and self._cut_for < self._flush_started_at
                if cut and now >= self._retry_after_until:
                    self._cut_for = self._flush_started_at
                    return 0.0, False
                if cut:
                    return self._retry_after_until - now, True
                return self._not_before - now, True
            if self._flush_waiters or self._retry or pending >= self._batch_size:
                return 0.0, False  # a retry is due as soon as its backoff is over
            oldest = self._retry[0].tracked_at if self._retry else self._events.queue[0].tracked_at
        age = self._clock() - oldest
        if age < 0:  # the wall clock stepped back: do not wait for it to catch up
            return 0.0, False
        return max(0.0, self._flush_interval - age), False

    # -- one step: take, serialize, send, account -------------------------------------------

    def _take(self) -> tuple[list[_Pending], list[QueuedEvent], int]:
        with self._cond:
            retried = [
                self._retry.popleft() for _ in range(min(len(self._retry), MAX_BATCH_EVENTS))
            ]
            room = MAX_BATCH_EVENTS - len(retried)
            with self._events.mutex:
                waiting = self._events.queue
                self._counters.observe_queue_size(len(waiting) + len(retried))
                fresh = [waiting.popleft() for _ in range(min(len(waiting), room))]
                first_seq = self._taken
                self._taken += len(fresh)
                if fresh:
                    self._events.not_full.notify(len(fresh))
            self._in_flight = len(retried) + len(fresh)
            self._in_flight_low = retried[0].seq if retried else first_seq
        return retried, fresh, first_seq

    def _encode(self, fresh: list[QueuedEvent], first_seq: int) -> list[_Pending]:
        encoded: list[_Pending] = []
        encode = self._encoder.encode
        refused: dict[str, int] = {}
        clock = time.perf_counter
        handoff_at = clock() + HANDOFF_INTERVAL
        for offset, item in enumerate(fresh):
            if clock() >= handoff_at:
                _hand_off_gil()
                handoff_at = clock() + HANDOFF_INTERVAL
            try:
                encoded.append(_Pending(first_seq + offset, encode(item), item.tracked_at))
            except RefusedError as exc:
                refused[exc.reason] = refused.get(exc.reason, 0) + 1
                logger.debug("analytics event not sent: %s", exc)
        for reason, count in refused.items():
            self._counters.fail(reason, count)
            self._settled += count
        return encoded

    def _step(self, deadline: float | None) -> bool:
        """Send one request's worth; returns True when an attempt failed and should be retried."""
        retried, fresh, first_seq = self._take()
        self._settled = 0
        failed = False
        try:
            pendings = retried + self._encode(fresh, first_seq)
            batch, overflow = _cut_by_bytes(pendings)
            if batch:
                failed = self._deliver(batch, overflow, deadline)
            else:
                self._put_back(overflow)
        except Exception:
            # A bug of ours (or of a logging filter): account what this step held, never
            # leave it uncounted, and let the loop go on.
            lost = len(retried) + len(fresh) - self._settled
            self._counters.fail("internal_error", lost)
            logger.exception("analytics worker: %d event(s) lost to an unexpected error", lost)
            failed = True
        finally:
            with self._cond:
                self._in_flight = 0
                self._cond.notify_all()
        return failed

    def _deliver(
        self, batch: list[_Pending], overflow: list[_Pending], deadline: float | None
    ) -> bool:
        # A stack of sub-batches: a 413 or a 400 on several events splits them in halves.
        stack = [batch]
        while stack:
            part = stack.pop()
            timeout = self._timeout
            if deadline is not None:
                timeout = min(timeout, deadline - self._monotonic())
                if timeout <= 0:
                    self._put_back([p for sub in (part, *reversed(stack)) for p in sub] + overflow)
                    return True
            started = self._monotonic()
            try:
                result = self._transport.send([p.data for p in part], timeout)
            except Exception as exc:  # a custom transport's bug must not lose the batch
                with _guarded():
                    logger.warning("analytics transport raised; retrying", exc_info=True)
                result = SendResult(False, error=f"transport raised {type(exc).__name__}")
            seconds = self._monotonic() - started
            if result.ok:
                now = self._clock()
                self._counters.record_send(
                    seconds=seconds,
                    delivered=len(part),
                    delivery_seconds=sum(now - p.tracked_at for p in part),
                )
                self._settled += len(part)
                self._succeeded()
                continue
            self._counters.record_send(seconds=seconds, error=_error_record(result))
            status = result.status
            if status in (400, 413) and len(part) > 1:
                middle = len(part) // 2
                stack.extend((part[middle:], part[:middle]))
                continue
            if is_retryable(status):
                rest = [p for sub in reversed(stack) for p in sub] + overflow
                self._retry_later(part, rest, result)
                return True
            reason = "oversize" if status == 413 else f"rejected_{status}"
            self._counters.fail(reason, len(part))
            self._settled += len(part)
            with _guarded():
                logger.warning(
                    "PostHog refused %d event(s) (%s): %s", len(part), reason, result.error
                )
        if overflow:
            self._put_back(overflow)
        return False

    def _succeeded(self) -> None:
        with self._cond:
            failures, self._failures = self._failures, 0
            self._not_before = 0.0
            self._retry_after_until = 0.0
        if failures:
            with _guarded():
                logger.info("analytics delivery recovered after %d failed attempt(s)", failures)

    def _retry_later(self, part: list[_Pending], rest: list[_Pending], result: SendResult) -> None:
        limit = len(part) if self._requeue_limit is None else self._requeue_limit
        again, dropped = part[:limit], part[limit:]
        self._counters.fail("retry_limit", len(dropped))
        self._settled += len(dropped)
        self._counters.record_retry(len(again))
        now = self._monotonic()
        with self._cond:
            self._failures += 1
            failures = self._failures
            delay = self._policy.delay(failures, result.retry_after, self._rng)
            self._not_before = now + delay
            self._retry_after_until = now + (result.retry_after or 0.0)
            stopping = self._stopping
        self._put_back(again + rest)
        # One WARNING per outage, not one per attempt; the rest at DEBUG.
        level = logging.WARNING if failures == 1 else logging.DEBUG
        with _guarded():
            logger.log(
                level,
                "sending %d analytics event(s) failed (%s); %d will be retried %s, "
                "%d dropped (requeue_limit)",
                len(part),
                result.error,
                len(again),
                "before exit" if stopping else f"in {delay:.1f} s",
                len(dropped),
            )

    def _put_back(self, pendings: list[_Pending]) -> None:
        if pendings:
            with self._cond:
                self._retry.extendleft(reversed(pendings))
            self._settled += len(pendings)


def _cut_by_bytes(pendings: list[_Pending]) -> tuple[list[_Pending], list[_Pending]]:
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


class _guarded:  # noqa: N801 - used as a statement: `with _guarded():`
    """Marks the current thread as running analytics_queue code while our logs are emitted."""

    __slots__ = ("_was",)

    def __enter__(self) -> None:
        self._was = reentry.active
        reentry.active = True

    def __exit__(self, *exc: object) -> None:
        reentry.active = self._was
