"""Delivery metrics: the counters the worker keeps, their frozen snapshot, and health.

:class:`Counters` is written by the worker (once per batch, not per event) and by ``track()``
only when it refuses an event, so the hot path of an accepted event touches none of it. All
writes and :meth:`Counters.snapshot` hold one lock: safe to share between threads.

:func:`evaluate_health` applies the seed's thresholds to a :class:`Metrics` snapshot.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

#: How many recent errors are kept for metrics and health.
RECENT_ERRORS: Final = 20

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
class Metrics:
    """A consistent snapshot of one AnalyticsQueue's delivery figures.

    At rest ``queued == delivered + failed + queue_size``: every accepted event is delivered,
    failed (with a reason) or still waiting. ``delivery_rate`` and ``failure_rate`` are percents
    of the events that reached a final state (100 and 0 before any did), leaving out the events
    the app dropped on purpose (reasons in :data:`DELIBERATE_REASONS`, such as sampling in
    ``before_send``), so that a sampling hook does not read as a failing pipeline.
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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Health:
    """A verdict on whether analytics is flowing, with the reasons for it.

    Attributes:
        status: ``healthy``, ``degraded`` or ``critical``.
        reasons: why the status is not healthy (and notes such as local mode).
        mode: ``posthog`` when events are sent, ``local`` when they are only logged.
    """

    status: HealthStatus
    reasons: list[str]
    mode: Mode
    metrics: Metrics

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: status, reasons, mode and the metrics it was judged on."""
        return {
            "status": self.status,
            "reasons": list(self.reasons),
            "mode": self.mode,
            "metrics": self.metrics.to_dict(),
        }


class Counters:
    """The mutable counters behind :class:`Metrics`. Safe to share between threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
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
            with self.lock:
                self.failed[reason] += count

    def record_send(
        self,
        *,
        seconds: float,
        delivered: int = 0,
        delivery_seconds: float = 0.0,
        error: ErrorRecord | None = None,
    ) -> None:
        """Account one HTTP attempt: its duration, and what it delivered or why it failed."""
        with self.lock:
            self.sends += 1
            self.send_seconds += seconds
            if error is None:
                self.batches_sent += 1
                self.delivered += delivered
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
    ) -> Metrics:
        """Freeze the counters together with the queue figures the caller read.

        ``extra_refusals``: refusals counted without this lock (re-entrant calls), by reason.
        """
        with self.lock:
            refused = self.refused + Counter(extra_refusals or {})
            failed = sum(self.failed.values())
            deliberate = sum(self.failed.get(reason, 0) for reason in DELIBERATE_REASONS)
            final = self.delivered + failed - deliberate
            last = self.errors[-1] if self.errors else None
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
            )


def evaluate_health(metrics: Metrics, *, mode: Mode, notes: list[str] | None = None) -> Health:
    """Judge a snapshot by the seed's thresholds.

    healthy: delivery_rate > 99 %, failure_rate < 1 % and queue_size < 100.
    degraded: delivery_rate > 95 %, failure_rate < 5 % and queue_size < 500.
    critical: anything worse, or events waiting with no worker alive in this process.
    A send failing right now makes it at least degraded. ``notes`` (local mode, uWSGI settings)
    are added to the reasons; a note about settings that lose events makes it degraded.
    """
    reasons: list[str] = []
    status: HealthStatus = "healthy"

    def worsen(to: HealthStatus, reason: str) -> None:
        nonlocal status
        order = ("healthy", "degraded", "critical")
        if order.index(to) > order.index(status):
            status = to
        reasons.append(reason)

    m = metrics
    if m.delivery_rate <= 95:
        worsen("critical", f"delivery rate {m.delivery_rate:.1f}% is at or below 95%")
    elif m.delivery_rate <= 99:
        worsen("degraded", f"delivery rate {m.delivery_rate:.1f}% is at or below 99%")
    if m.failure_rate >= 5:
        worsen("critical", f"failure rate {m.failure_rate:.1f}% is 5% or more")
    elif m.failure_rate >= 1:
        worsen("degraded", f"failure rate {m.failure_rate:.1f}% is 1% or more")
    if m.queue_size >= 500:
        worsen("critical", f"{m.queue_size} events waiting (500 or more)")
    elif m.queue_size >= 100:
        worsen("degraded", f"{m.queue_size} events waiting (100 or more)")
    if m.queue_size and not m.worker_alive:
        worsen("critical", f"{m.queue_size} events waiting but no worker thread is alive")
    if m.consecutive_failures and m.last_error:
        worsen(
            "degraded",
            f"the last {m.consecutive_failures} send(s) failed: {m.last_error['message']}",
        )
    for note in notes or []:
        if note.startswith("uWSGI"):
            worsen("degraded", note)
        else:
            reasons.append(note)
    return Health(status=status, reasons=reasons, mode=mode, metrics=metrics)
