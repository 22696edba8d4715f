"""The delivery policy: when the worker sends, and what an attempt's answer means.

A plain state machine driven by the caller's clock (every method takes ``now``), so that its
scheduling is tested in microseconds with a fake clock:

- :meth:`DeliveryPolicy.decide` is the one export decision, a function of what waits, the time,
  the flush calls in progress and the stop deadline: send now, wait (and on what), or stop.
- :meth:`DeliveryPolicy.judge` classifies an attempt: delivered, split (400/413 on several
  events), retry later (network error, 408, 429, 5xx), or rejected for good.
- :meth:`DeliveryPolicy.failed` and :meth:`DeliveryPolicy.succeeded` keep the backoff: full
  jitter, at least the server's ``Retry-After``. Each ``flush()`` call may cut a backoff short
  once (never a ``Retry-After``), whatever other flush calls do; while stopping, failed
  attempts are paced by :data:`DRAIN_PAUSE` instead.

Not thread-safe: the worker guards it with its own lock.
"""

from __future__ import annotations

import enum
import itertools
import random
from dataclasses import dataclass
from typing import Final, TypeVar

from analytics_queue.retry import RetryPolicy, is_retryable
from analytics_queue.sending import SendResult

#: The pause between failed attempts while stopping: backoff is cut short, but a dead server
#: must not turn the drain into a busy loop.
DRAIN_PAUSE: Final = 0.1

T = TypeVar("T")


class Verdict(enum.Enum):
    """What one attempt's answer means for its events."""

    DELIVERED = "delivered"
    SPLIT = "split"
    RETRY = "retry"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Decision:
    """Send now, wait ``seconds`` (on track() as well as flush/stop, or only on those), or stop."""

    send: bool = False
    stop: bool = False
    seconds: float = 0.0
    backing_off: bool = False


SEND: Final = Decision(send=True)
STOP: Final = Decision(stop=True)


class DeliveryPolicy:
    """Backoff, Retry-After, flush cuts, the stop deadline and the requeue limit.

    Args:
        batch_size: send as soon as this many events wait.
        flush_interval: send at most this long after the oldest waiting event was tracked.
        requeue_limit: after a retryable failure, this many events of the attempt go again
            (None: all of them).
        retry_policy: the backoff between failed attempts.
        rng: the random source for the backoff's jitter.
    """

    def __init__(
        self,
        *,
        batch_size: int,
        flush_interval: float,
        requeue_limit: int | None,
        retry_policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.requeue_limit = requeue_limit
        self._retry_policy = retry_policy or RetryPolicy()
        self._rng = rng or random.Random()
        self.failures = 0
        self._not_before = 0.0
        self._retry_after_until = 0.0
        self._last_failed_at: float | None = None
        self._flushes: dict[int, bool] = {}  # flush call -> its cut is still unused
        self._tokens = itertools.count()
        self.stop_deadline: float | None = None

    # -- inputs -----------------------------------------------------------------------------

    def flush_started(self) -> int:
        """A flush call begins; returns its token for :meth:`flush_ended`."""
        token = next(self._tokens)
        self._flushes[token] = True
        return token

    def flush_ended(self, token: int) -> None:
        self._flushes.pop(token, None)

    def stop(self, deadline: float, now: float) -> None:
        """Send what waits until ``deadline``, then stop.

        An earlier deadline wins, except over one that has passed: a drain that ran out of time
        (a ``shutdown()`` with a short timeout) may run again at exit with the exit's budget.
        """
        if self.stop_deadline is None or deadline < self.stop_deadline or now >= self.stop_deadline:
            self.stop_deadline = deadline

    @property
    def stopping(self) -> bool:
        return self.stop_deadline is not None

    # -- the decision -----------------------------------------------------------------------

    def decide(
        self, now: float, *, pending: int, retrying: bool, oldest_age: float | None
    ) -> Decision:
        """What to do at ``now`` (monotonic) with ``pending`` events waiting.

        ``retrying``: the retry line holds events. ``oldest_age``: seconds since the oldest
        waiting event was tracked (wall clock; negative after the clock stepped back).
        """
        if self.stop_deadline is not None:
            if pending == 0 or now >= self.stop_deadline:
                return STOP
            if self._last_failed_at is not None and now < self._last_failed_at + DRAIN_PAUSE:
                return Decision(seconds=self._last_failed_at + DRAIN_PAUSE - now)
            return SEND
        if pending == 0:
            return Decision(seconds=self.flush_interval)
        if now < self._not_before:
            return self._backing_off(now)
        if self._flushes or retrying or pending >= self.batch_size:
            return SEND
        if oldest_age is None or oldest_age < 0:  # the wall clock stepped back: do not wait
            return SEND
        wait = self.flush_interval - oldest_age
        return SEND if wait <= 0 else Decision(seconds=wait)

    def _backing_off(self, now: float) -> Decision:
        unused = next((t for t, unused in self._flushes.items() if unused), None)
        if unused is None:
            return Decision(seconds=self._not_before - now, backing_off=True)
        if now < self._retry_after_until:  # a flush never cuts the server's Retry-After
            return Decision(seconds=self._retry_after_until - now, backing_off=True)
        self._flushes[unused] = False
        return SEND

    # -- an attempt's answer ----------------------------------------------------------------

    @staticmethod
    def judge(result: SendResult, size: int) -> Verdict:
        """Classify the answer to an attempt that carried ``size`` events."""
        if result.ok:
            return Verdict.DELIVERED
        if result.status in (400, 413) and size > 1:
            return Verdict.SPLIT
        if is_retryable(result.status):
            return Verdict.RETRY
        return Verdict.REJECTED

    @staticmethod
    def rejection_reason(result: SendResult) -> str:
        """The failure reason counted for events rejected for good."""
        return "oversize" if result.status == 413 else f"rejected_{result.status}"

    def succeeded(self) -> int:
        """An attempt was delivered; returns how many attempts had failed in a row before."""
        failures, self.failures = self.failures, 0
        self._not_before = self._retry_after_until = 0.0
        self._last_failed_at = None
        return failures

    def failed(self, now: float, retry_after: float | None) -> float:
        """A retryable attempt failed at ``now``; returns the seconds until the next one."""
        self.failures += 1
        delay = self._retry_policy.delay(self.failures, retry_after, self._rng)
        self._not_before = now + delay
        self._retry_after_until = now + (retry_after or 0.0)
        self._last_failed_at = now
        return delay

    def split_requeue(self, events: list[T]) -> tuple[list[T], list[T]]:
        """(events that go again, events dropped) after a retryable failure."""
        limit = len(events) if self.requeue_limit is None else self.requeue_limit
        return events[:limit], events[limit:]
