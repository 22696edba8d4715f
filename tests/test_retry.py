"""The retry policy, without threads or sleeps."""

from __future__ import annotations

import random

import pytest

from analytics_queue.retry import MAX_RETRY_AFTER, RetryPolicy, is_retryable, parse_retry_after


def test_backoff_doubles_from_one_second_up_to_the_cap() -> None:
    policy = RetryPolicy(jitter=False)
    assert [policy.backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert policy.backoff(0) == 0
    assert policy.backoff(10_000) == 30


def test_full_jitter_stays_within_zero_and_the_bound() -> None:
    policy = RetryPolicy()
    rng = random.Random(7)
    samples = [policy.backoff(3, rng) for _ in range(2000)]
    assert min(samples) >= 0 and max(samples) <= 4
    # Full jitter spreads over the whole range, not a narrow band around the bound.
    assert min(samples) < 0.5 and max(samples) > 3.5


def test_delay_is_at_least_the_retry_after() -> None:
    policy = RetryPolicy(jitter=False)
    assert policy.delay(1, 7.0) == 7.0
    assert policy.delay(4, 2.0) == 8.0
    assert policy.delay(1, None) == 1.0


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (None, True),
        (408, True),
        (429, True),
        (500, True),
        (503, True),
        (599, True),
        (400, False),
        (401, False),
        (403, False),
        (413, False),
        (200, False),
    ],
)
def test_is_retryable(status: int | None, retryable: bool) -> None:
    assert is_retryable(status) is retryable


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after("-4", now) == 0.0
    assert parse_retry_after("100000", now) == MAX_RETRY_AFTER
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now) == 20.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:00 GMT", now) == 0.0
    for bad in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(bad, now) is None
