"""The retry policy: which answers are retried, the backoff between attempts, ``Retry-After``.

Pure functions of their arguments (the random source and the clock are passed in), so they are
tested without threads or sleeps. Safe to share between threads: a RetryPolicy never changes.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Final

#: Statuses that mean "try again later": timeout, rate limit, and every server error.
RETRYABLE_STATUSES: Final = frozenset({408, 429})
#: The longest Retry-After we honour; a larger one is cut to this.
MAX_RETRY_AFTER: Final = 600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**(n-1))).

    Args:
        base: the first attempt's upper bound, seconds.
        cap: the largest upper bound, seconds.
        jitter: False waits the upper bound itself (for tests and docs).
    """

    base: float = 1.0
    cap: float = 30.0
    jitter: bool = True

    def backoff(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after ``failures`` consecutive failed attempts (>= 1)."""
        if failures < 1:
            return 0.0
        bound = min(self.cap, self.base * 2.0 ** min(failures - 1, 62))
        if not self.jitter:
            return bound
        return (rng or random).uniform(0.0, bound)

    def delay(
        self, failures: int, retry_after: float | None, rng: random.Random | None = None
    ) -> float:
        """The wait before the next attempt: the backoff, and at least the server's Retry-After."""
        wait = self.backoff(failures, rng)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return wait


def is_retryable(status: int | None) -> bool:
    """True for a network failure (``None``), 408, 429 and every 5xx."""
    return status is None or status in RETRYABLE_STATUSES or 500 <= status <= 599


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    Returns None when the header is missing or unreadable; never a negative number, and never
    more than :data:`MAX_RETRY_AFTER`.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        import email.utils  # only for the rare HTTP-date form: a costly import

        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
