"""One step of the worker: take a batch, serialize it, send it, and account for every event.

The pump (:mod:`analytics_queue._worker`) decides *when*; a :class:`Sender` does one step: it
takes a batch from the ledger (the retry line first, then the buffer, and with a spool the
oldest rows on disk), serializes it in chunks with GIL hand-offs between them, cuts it to
:data:`MAX_BATCH_BYTES`, sends it, and moves every event to exactly one place: delivered or
failed (counted), back to the retry line, or to the spool. 400 and 413 on several events split
the part in halves; the delivery policy judges every answer and keeps the backoff.

With a :class:`~analytics_queue.sending.Pipelined` transport a step on the worker thread
pipelines: while one request waits for its answer, it takes and serializes the next batch and
prepares its body (:class:`_Ahead`), which goes out as soon as the answer came. The batch ahead
is in flight in the ledger like the one on the wire; when the answer calls for a retry, or the
stop deadline passed, it goes back to the retry line unsent.

With a :class:`~analytics_queue._spool_keeper.SpoolKeeper`, each batch is written before its
first send and removed once acknowledged; what fails and what waits while PostHog is down is
handed over to it (:meth:`Sender.spool_waiting`).

Thread safety: none of its own: the pump runs one step at a time under its send lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from analytics_queue._buffer import EventBuffer
from analytics_queue._delivery import DeliveryPolicy, Verdict
from analytics_queue._ledger import Batch, Ledger, Pending
from analytics_queue.errors import RefusedError
from analytics_queue.event import EventEncoder
from analytics_queue.metrics import Counters, ErrorRecord
from analytics_queue.sending import Pipelined, SendResult, Transport

if TYPE_CHECKING:  # the spool (and SQLite) load only with spool_path
    from analytics_queue._spool_keeper import SpoolKeeper

logger = logging.getLogger(__name__)

#: A request carries at most this many events ...
MAX_BATCH_EVENTS: Final = 500
#: ... and at most this many bytes before compression (PostHog accepts 20 MiB).
MAX_BATCH_BYTES: Final = 1024 * 1024
#: Seconds of serializing between two GIL hand-offs: a request thread that wants the GIL waits
#: at most about this long for the worker, instead of the interpreter's 5 ms switch interval.
#: (A hand-off is a zero sleep, which itself costs tens of microseconds: not after every event.)
HANDOFF_INTERVAL: Final = 0.0003


class Sender:
    """Takes, serializes, sends and accounts for one batch at a time.

    Args:
        ledger: where every event is; batches are taken from it.
        policy: judges answers and keeps the backoff; guarded by ``state``.
        state: the lock the pump and the sender hold around ``policy``.
        transport: sends one request.
        encoder: serializes one queued event.
        counters: where every attempt and every final state is counted.
        buffer: the queue ``track()`` puts on (read for the peak queue size).
        timeout: seconds for one HTTP attempt.
        clock: wall-clock seconds, the clock of ``tracked_at``.
        monotonic: the clock of deadlines.
        spool: keeps events on disk (None: memory only).
    """

    def __init__(
        self,
        ledger: Ledger,
        policy: DeliveryPolicy,
        state: threading.Lock,
        transport: Transport,
        encoder: EventEncoder,
        counters: Counters,
        buffer: EventBuffer,
        *,
        timeout: float,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        spool: SpoolKeeper | None,
    ) -> None:
        self.ledger = ledger
        self._policy = policy
        self._state = state
        self._transport = transport
        self._encoder = encoder
        self._counters = counters
        self.buffer = buffer
        self._timeout = timeout
        self._clock = clock
        self._monotonic = monotonic
        self.spool = spool
        self._ahead: _Ahead | None = None
        self._handoff_at = 0.0  # perf_counter time of the next GIL hand-off
        self._may_prepare: Callable[[], bool] | None = None

    def spool_waiting(self) -> None:
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

    def step(
        self,
        deadline: float | None = None,
        may_prepare_ahead: Callable[[], bool] | None = None,
    ) -> None:
        """Send one request's worth (and, pipelining, the batches prepared meanwhile).

        Args:
            deadline: bounds the step on a caller's thread (monotonic); None on the worker.
            may_prepare_ahead: asked while a request is in flight whether the next batch is
                due; None never prepares ahead (steps on a caller's thread, whose deadline
                must hold between attempts).
        """
        self._may_prepare = may_prepare_ahead
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
        may_prepare = self._may_prepare
        if self._ahead is not None or not isinstance(transport, Pipelined) or may_prepare is None:
            return
        with self._state:
            healthy = self._policy.failures == 0
        if not healthy or not may_prepare():
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
