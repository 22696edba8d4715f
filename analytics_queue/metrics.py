"""Delivery metrics: the counters the worker keeps, their frozen snapshot, and health.

:class:`Counters` is written by the worker (once per batch, not per event) and by ``track()``
only when it refuses an event, so the hot path of an accepted event touches none of it. All
writes and :meth:`Counters.snapshot` hold one lock: safe to share between threads.

:func:`evaluate_health` judges a :class:`Metrics` snapshot. Its delivery and failure rates are
those of the last ``health_window`` seconds (:class:`DeliveryWindow`), not of the process's
lifetime, so a verdict heals once a blip leaves the window. Each reason carries a stable
``code`` (:class:`Reason`) for programs, and a message for people.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from analytics_queue._guard import reading

if TYPE_CHECKING:
    from analytics_queue._spool_keeper import SpoolFigures

#: How many recent errors are kept for metrics and health.
RECENT_ERRORS: Final = 20
#: Seconds of delivery history the health verdict judges (the ``health_window`` option).
DEFAULT_HEALTH_WINDOW: Final = 300.0
#: The window keeps at most this many buckets, whatever its length.
WINDOW_BUCKETS: Final = 300
#: The oldest event not yet delivered is this many flush intervals old: delivery is stalled
#: (degraded) ...
STALLED_INTERVALS: Final = 3
#: ... and this many: critical.
STALLED_CRITICAL_INTERVALS: Final = 12

# Reason codes: stable names a program may match on (the messages may change).
DELIVERY_RATE: Final = "delivery_rate"
FAILURE_RATE: Final = "failure_rate"
QUEUE_BACKLOG: Final = "queue_backlog"
NO_WORKER: Final = "no_worker"
SEND_FAILING: Final = "send_failing"
DELIVERY_STALLED: Final = "delivery_stalled"
LOCAL_MODE: Final = "local_mode"
#: Health is critical once the oldest spooled event is this old, seconds ...
SPOOL_CRITICAL_AGE: Final = 3600.0
#: ... or the spool holds this share of its bound.
SPOOL_CRITICAL_SHARE: Final = 0.9
SPOOL_WAITING: Final = "spool_waiting"
SPOOL_UNUSABLE: Final = "spool_unusable"
SPOOL_MOVED_ASIDE: Final = "spool_moved_aside"
SPOOL_DROPPED: Final = "spool_dropped"

HealthStatus = Literal["healthy", "degraded", "critical"]
Mode = Literal["posthog", "local"]


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """One failed attempt: its status (None for a network error), message and wall time."""

    status: int | None
    message: str
    at: float


#: Failure reasons that are the app's own choice (``before_send`` returned None): counted, but
#: left out of ``delivery_rate`` and ``failure_rate``.
DELIBERATE_REASONS: Final = frozenset({"before_send"})


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a verdict is not healthy, or a note on it.

    Attributes:
        code: a stable snake_case name (``delivery_rate``, ``delivery_stalled``,
            ``uwsgi_no_fork_hooks``, ...) for alerts and programs to match on.
        message: the explanation for people; its wording may change.
    """

    code: str
    message: str

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, str]:
        """``{"code": ..., "message": ...}``."""
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class Metrics:
    """A consistent snapshot of one AnalyticsQueue's delivery figures.

    At rest ``queued + replayed == delivered + failed + spooled + queue_size``: every accepted
    event is delivered, failed (with a reason), spooled (kept on disk for this process or
    another to send) or still waiting; events taken back from the spool (``replayed``) enter
    the same way. Without a spool, ``spooled`` and ``replayed`` stay 0, and the accounting reads
    ``queued == delivered + failed + queue_size``. ``delivery_rate`` and ``failure_rate`` are
    percents of the events that reached a final state (100 and 0 before any did) over the
    process's lifetime, leaving out the events the app dropped on purpose (reasons in
    :data:`DELIBERATE_REASONS`, such as sampling in ``before_send``); the ``window_*`` figures
    are the same over the last ``health_window`` seconds, and are what health judges.

    ``spool`` describes the spool file (None without one): ``path``, ``active`` (False: memory
    only, ``problem`` says why), ``rows``, ``bytes``, ``max_bytes``, ``oldest_age_s``,
    ``dropped`` (by reason), ``problem`` and ``moved_to`` (where a corrupt file went).
    """

    queued: int
    delivered: int
    failed: int
    failed_by_reason: dict[str, int]
    refused: int
    refused_by_reason: dict[str, int]
    retried: int
    batches_sent: int
    batches_failed: int
    queue_size: int
    peak_queue_size: int
    avg_delivery_ms: float
    avg_send_ms: float
    delivery_rate: float
    failure_rate: float
    last_error: dict[str, Any] | None
    last_success_at: float | None
    consecutive_failures: int
    worker_alive: bool
    recent_errors: list[dict[str, Any]] = field(default_factory=list)
    health_window: float = DEFAULT_HEALTH_WINDOW
    window_delivered: int = 0
    window_failed: int = 0
    window_delivery_rate: float = 100.0
    window_failure_rate: float = 0.0
    spooled: int = 0
    replayed: int = 0
    spool: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Health:
    """A verdict on whether analytics is flowing, with the reasons for it.

    For monitoring and alerts only: never point a liveness or readiness probe at it (an
    analytics outage must not restart or unroute the app).

    Attributes:
        status: ``healthy``, ``degraded`` or ``critical``.
        reasons: why the status is not healthy (and notes such as local mode), each with a
            ``code`` to match on.
        mode: ``posthog`` when events are sent, ``local`` when they are only logged.
    """

    status: HealthStatus
    reasons: list[Reason]
    mode: Mode
    metrics: Metrics

    @property
    def codes(self) -> list[str]:
        """The codes of :attr:`reasons`, in order."""
        return [reason.code for reason in self.reasons]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: status, reasons (code and message), mode and the metrics."""
        return {
            "status": self.status,
            "reasons": [reason.to_dict() for reason in self.reasons],
            "mode": self.mode,
            "metrics": self.metrics.to_dict(),
        }


class DeliveryWindow:
    """Delivered and failed event counts over the last ``seconds``, in time buckets.

    Pure: every call takes ``now`` (monotonic seconds), so it is tested with a fake clock. Counts
    are kept per bucket of ``seconds / WINDOW_BUCKETS`` (at most a second), so an outcome leaves
    the window at most one bucket late. Not thread safe: :class:`Counters` holds its lock.

    Args:
        seconds: the window's length, > 0.
    """

    __slots__ = ("_buckets", "_width", "seconds")

    def __init__(self, seconds: float = DEFAULT_HEALTH_WINDOW) -> None:
        if not seconds > 0 or not math.isfinite(seconds):
            raise ValueError(f"seconds must be a finite number > 0, got {seconds!r}")
        self.seconds = float(seconds)
        self._width = min(1.0, self.seconds / WINDOW_BUCKETS)
        # [bucket index, delivered, failed], oldest first.
        self._buckets: deque[list[int]] = deque()

    def add(self, now: float, *, delivered: int = 0, failed: int = 0) -> None:
        """Count outcomes that happened at ``now``."""
        if not (delivered or failed):
            return
        index = math.floor(now / self._width)
        if self._buckets and self._buckets[-1][0] >= index:
            bucket = self._buckets[-1]  # the same bucket, or a clock that stepped back
        else:
            bucket = [index, 0, 0]
            self._buckets.append(bucket)
        bucket[1] += delivered
        bucket[2] += failed
        self._expire(now)

    def totals(self, now: float) -> tuple[int, int]:
        """(delivered, failed) within the window that ends at ``now``."""
        self._expire(now)
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def _expire(self, now: float) -> None:
        # A bucket leaves once its end is more than ``seconds`` ago.
        oldest = (now - self.seconds) / self._width
        while self._buckets and self._buckets[0][0] + 1 <= oldest:
            self._buckets.popleft()


class Counters:
    """The mutable counters behind :class:`Metrics`. Safe to share between threads.

    Args:
        health_window: seconds of delivery history that health judges.
        clock: monotonic seconds, the clock of the window.
    """

    def __init__(
        self,
        health_window: float = DEFAULT_HEALTH_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lock = threading.Lock()
        self.window = DeliveryWindow(health_window)
        self._clock = clock
        self.delivered = 0
        self.failed: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.retried = 0
        self.batches_sent = 0
        self.batches_failed = 0
        self.peak_queue_size = 0
        self.delivery_seconds = 0.0
        self.send_seconds = 0.0
        self.sends = 0
        self.last_success_at: float | None = None
        self.consecutive_failures = 0
        self.errors: deque[ErrorRecord] = deque(maxlen=RECENT_ERRORS)

    def refuse(self, reason: str) -> None:
        with self.lock:
            self.refused[reason] += 1

    def fail(self, reason: str, count: int) -> None:
        if count:
            now = self._clock()
            with self.lock:
                self.failed[reason] += count
                if reason not in DELIBERATE_REASONS:  # sampling is not a failing pipeline
                    self.window.add(now, failed=count)

    def record_send(
        self,
        *,
        seconds: float,
        delivered: int = 0,
        delivery_seconds: float = 0.0,
        error: ErrorRecord | None = None,
    ) -> None:
        """Account one HTTP attempt: its duration, and what it delivered or why it failed."""
        now = self._clock()
        with self.lock:
            self.sends += 1
            self.send_seconds += seconds
            if error is None:
                self.batches_sent += 1
                self.delivered += delivered
                self.window.add(now, delivered=delivered)
                self.delivery_seconds += delivery_seconds
                self.last_success_at = time.time()
                self.consecutive_failures = 0
            else:
                self.batches_failed += 1
                self.consecutive_failures += 1
                self.errors.append(error)

    def record_retry(self, count: int) -> None:
        with self.lock:
            self.retried += count

    def observe_queue_size(self, size: int) -> None:
        if size > self.peak_queue_size:
            with self.lock:
                self.peak_queue_size = max(self.peak_queue_size, size)

    def snapshot(
        self,
        *,
        queued: int,
        queue_size: int,
        worker_alive: bool,
        extra_refusals: dict[str, int] | None = None,
        spooled: int = 0,
        replayed: int = 0,
        spool: SpoolFigures | None = None,
    ) -> Metrics:
        """Freeze the counters together with the queue figures the caller read.

        ``extra_refusals``: refusals counted without this lock (re-entrant calls), by reason.
        ``spooled``, ``replayed``: the ledger's spool totals; ``spool``: the file's figures.
        """
        now = self._clock()
        with reading(self.lock):
            refused = self.refused + Counter(extra_refusals or {})
            failed = sum(self.failed.values())
            deliberate = sum(self.failed.get(reason, 0) for reason in DELIBERATE_REASONS)
            final = self.delivered + failed - deliberate
            last = self.errors[-1] if self.errors else None
            window_delivered, window_failed = self.window.totals(now)
            window_final = window_delivered + window_failed
            return Metrics(
                queued=queued,
                delivered=self.delivered,
                failed=failed,
                failed_by_reason=dict(self.failed),
                refused=sum(refused.values()),
                refused_by_reason=dict(refused),
                retried=self.retried,
                batches_sent=self.batches_sent,
                batches_failed=self.batches_failed,
                queue_size=queue_size,
                peak_queue_size=max(self.peak_queue_size, queue_size),
                avg_delivery_ms=(
                    self.delivery_seconds * 1000 / self.delivered if self.delivered else 0.0
                ),
                avg_send_ms=self.send_seconds * 1000 / self.sends if self.sends else 0.0,
                delivery_rate=100.0 * self.delivered / final if final else 100.0,
                failure_rate=100.0 * (failed - deliberate) / final if final else 0.0,
                last_error=asdict(last) if last else None,
                last_success_at=self.last_success_at,
                consecutive_failures=self.consecutive_failures,
                worker_alive=worker_alive,
                recent_errors=[asdict(e) for e in self.errors],
                health_window=self.window.seconds,
                window_delivered=window_delivered,
                window_failed=window_failed,
                window_delivery_rate=(
                    100.0 * window_delivered / window_final if window_final else 100.0
                ),
                window_failure_rate=100.0 * window_failed / window_final if window_final else 0.0,
                spooled=spooled,
                replayed=replayed,
                spool=None if spool is None else _spool_dict(spool),
            )


def _spool_dict(figures: SpoolFigures) -> dict[str, Any]:
    oldest = figures.oldest_tracked_at
    return {
        "path": figures.path,
        "active": figures.active,
        "rows": figures.rows,
        "bytes": figures.bytes,
        "max_bytes": figures.max_bytes,
        "oldest_age_s": None if oldest is None else max(0.0, time.time() - oldest),
        "dropped": dict(figures.dropped),
        "problem": figures.problem,
        "moved_to": figures.moved_to,
    }


def evaluate_health(
    metrics: Metrics,
    *,
    mode: Mode,
    notes: Iterable[Reason] = (),
    oldest_waiting_age: float | None = None,
    flush_interval: float | None = None,
) -> Health:
    """Judge a snapshot.

    healthy: over the last ``health_window`` seconds, delivery rate > 99 % and failure rate
    < 1 %; fewer than 100 events waiting.
    degraded: delivery rate > 95 %, failure rate < 5 %, fewer than 500 waiting.
    critical: anything worse, or events waiting with no worker alive in this process.
    A send failing right now makes it at least degraded.

    Stalled delivery: when the oldest event not yet delivered or failed was tracked more than
    ``STALLED_INTERVALS`` flush intervals ago, delivery is stalled even if nothing failed yet
    (a hung DNS lookup, a worker that stopped): degraded, critical past
    ``STALLED_CRITICAL_INTERVALS``.

    Args:
        metrics: the snapshot to judge.
        mode: ``posthog`` or ``local``.
        notes: reasons added as they are (local mode); a ``uwsgi_*`` code (settings that lose
            events) makes it at least degraded.
        oldest_waiting_age: seconds since the oldest event not yet in a final state (waiting,
            in flight or to be retried) was tracked; None when none waits or it is unknown.
        flush_interval: the queue's ``flush_interval``; the stall check needs it.

    With a spool: degraded while events wait in it, when it dropped events for its bound, or
    when it is unusable (memory only); critical once its oldest event is
    :data:`SPOOL_CRITICAL_AGE` old or it holds :data:`SPOOL_CRITICAL_SHARE` of its bound.
    """
    reasons: list[Reason] = []
    status: HealthStatus = "healthy"

    def worsen(to: HealthStatus, code: str, message: str) -> None:
        nonlocal status
        order = ("healthy", "degraded", "critical")
        if order.index(to) > order.index(status):
            status = to
        reasons.append(Reason(code, message))

    m = metrics
    window = f"over the last {m.health_window:g} s"
    if m.window_delivery_rate <= 95:
        worsen(
            "critical",
            DELIVERY_RATE,
            f"delivery rate {m.window_delivery_rate:.1f}% {window} is at or below 95%",
        )
    elif m.window_delivery_rate <= 99:
        worsen(
            "degraded",
            DELIVERY_RATE,
            f"delivery rate {m.window_delivery_rate:.1f}% {window} is at or below 99%",
        )
    if m.window_failure_rate >= 5:
        worsen(
            "critical",
            FAILURE_RATE,
            f"failure rate {m.window_failure_rate:.1f}% {window} is 5% or more",
        )
    elif m.window_failure_rate >= 1:
        worsen(
            "degraded",
            FAILURE_RATE,
            f"failure rate {m.window_failure_rate:.1f}% {window} is 1% or more",
        )
    if m.queue_size >= 500:
        worsen("critical", QUEUE_BACKLOG, f"{m.queue_size} events waiting (500 or more)")
    elif m.queue_size >= 100:
        worsen("degraded", QUEUE_BACKLOG, f"{m.queue_size} events waiting (100 or more)")
    if m.queue_size and not m.worker_alive:
        worsen(
            "critical", NO_WORKER, f"{m.queue_size} events waiting but no worker thread is alive"
        )
    if m.consecutive_failures and m.last_error:
        worsen(
            "degraded",
            SEND_FAILING,
            f"the last {m.consecutive_failures} send(s) failed: {m.last_error['message']}",
        )
    if oldest_waiting_age is not None and flush_interval and m.queue_size:
        intervals = oldest_waiting_age / flush_interval
        if intervals > STALLED_INTERVALS:
            worsen(
                "critical" if intervals > STALLED_CRITICAL_INTERVALS else "degraded",
                DELIVERY_STALLED,
                f"delivery stalled: the oldest waiting event was tracked "
                f"{oldest_waiting_age:.0f} s ago ({intervals:.0f} flush intervals)",
            )
    if m.spool is not None:
        _judge_spool(m.spool, worsen)
    for note in notes:
        if note.code.startswith("uwsgi"):
            worsen("degraded", note.code, note.message)
        else:
            reasons.append(note)
    return Health(status=status, reasons=reasons, mode=mode, metrics=metrics)


def _judge_spool(spool: dict[str, Any], worsen: Callable[[HealthStatus, str, str], None]) -> None:
    if spool["problem"]:
        worsen("degraded", SPOOL_UNUSABLE, f"{spool['problem']}; events are kept in memory only")
    if spool["moved_to"]:
        worsen(
            "degraded",
            SPOOL_MOVED_ASIDE,
            f"a corrupt spool file was moved to {spool['moved_to']}",
        )
    rows, age = spool["rows"], spool["oldest_age_s"]
    if rows:
        waited = "" if age is None else f", the oldest {age:.0f} s old"
        if age is not None and age >= SPOOL_CRITICAL_AGE:
            worsen("critical", SPOOL_WAITING, f"{rows} events wait in the spool{waited}")
        elif spool["bytes"] >= SPOOL_CRITICAL_SHARE * spool["max_bytes"]:
            worsen(
                "critical",
                SPOOL_WAITING,
                f"the spool holds {spool['bytes']} of its {spool['max_bytes']} bytes",
            )
        else:
            worsen("degraded", SPOOL_WAITING, f"{rows} events wait in the spool{waited}")
    dropped = sum(spool["dropped"].values())
    if dropped:
        worsen(
            "degraded", SPOOL_DROPPED, f"the spool dropped its {dropped} oldest events (size bound)"
        )
