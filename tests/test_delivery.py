"""The delivery policy on a fake clock: every scheduling rule, in microseconds, with no thread."""

from __future__ import annotations

import random

import pytest

from analytics_queue._delivery import DRAIN_PAUSE, SEND, STOP, DeliveryPolicy, Verdict
from analytics_queue.retry import MAX_RETRY_AFTER, RetryPolicy, parse_retry_after
from analytics_queue.transport import SendResult


def make(**options: object) -> DeliveryPolicy:
    defaults: dict[str, object] = {
        "batch_size": 10,
        "flush_interval": 5.0,
        "requeue_limit": 5,
        "retry_policy": RetryPolicy(base=1.0, cap=30.0, jitter=False),
    }
    defaults.update(options)
    return DeliveryPolicy(**defaults)  # type: ignore[arg-type]


def test_an_idle_policy_waits_one_flush_interval_for_track_to_wake_it() -> None:
    decision = make().decide(0.0, pending=0, retrying=False, oldest_age=None)
    assert not decision.send and decision.seconds == 5.0 and not decision.backing_off


def test_a_full_batch_is_sent_at_once_and_a_partial_one_when_its_oldest_event_is_due() -> None:
    policy = make()
    assert policy.decide(0.0, pending=10, retrying=False, oldest_age=0.0) == SEND
    waiting = policy.decide(0.0, pending=3, retrying=False, oldest_age=1.5)
    assert not waiting.send and waiting.seconds == pytest.approx(3.5)
    assert policy.decide(0.0, pending=3, retrying=False, oldest_age=5.0) == SEND


def test_a_wall_clock_stepping_back_never_delays_a_send() -> None:
    assert make().decide(0.0, pending=1, retrying=False, oldest_age=-100.0) == SEND


def test_backoff_doubles_up_to_its_cap_and_a_success_resets_it() -> None:
    policy = make()
    delays = [policy.failed(0.0, None) for _ in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert policy.succeeded() == 7
    assert policy.failed(0.0, None) == 1.0


def test_jittered_backoff_stays_within_its_bound() -> None:
    policy = make(retry_policy=RetryPolicy(base=1.0, cap=30.0), rng=random.Random(7))
    for failures in range(1, 12):
        bound = min(30.0, 2.0 ** (failures - 1))
        delay = policy.failed(0.0, None)
        assert 0.0 <= delay <= bound


def test_the_pump_waits_out_a_backoff_and_only_flush_or_stop_may_interrupt_it() -> None:
    policy = make()
    policy.failed(100.0, None)  # 1 s
    decision = policy.decide(100.25, pending=5, retrying=True, oldest_age=0.0)
    assert decision.backing_off and decision.seconds == pytest.approx(0.75)
    assert policy.decide(101.0, pending=5, retrying=True, oldest_age=0.0) == SEND


def test_retry_after_is_honoured_and_never_cut_by_a_flush() -> None:
    policy = make()
    policy.failed(0.0, 20.0)
    token = policy.flush_started()
    decision = policy.decide(1.0, pending=1, retrying=True, oldest_age=0.0)
    assert decision.backing_off and decision.seconds == pytest.approx(19.0)
    assert policy.decide(20.0, pending=1, retrying=True, oldest_age=0.0) == SEND
    policy.flush_ended(token)


def test_retry_after_is_capped() -> None:
    assert parse_retry_after("999999") == MAX_RETRY_AFTER
    policy = make()
    assert policy.failed(0.0, parse_retry_after("999999")) == MAX_RETRY_AFTER


def test_a_flush_cuts_a_backoff_short_once() -> None:
    policy = make(retry_policy=RetryPolicy(base=30.0, cap=30.0, jitter=False))
    policy.failed(0.0, None)
    token = policy.flush_started()
    assert policy.decide(1.0, pending=1, retrying=True, oldest_age=0.0) == SEND
    policy.failed(1.0, None)  # the cut attempt failed too: back off again
    assert policy.decide(2.0, pending=1, retrying=True, oldest_age=0.0).backing_off
    policy.flush_ended(token)


def test_each_of_several_concurrent_flushes_gets_its_own_cut() -> None:
    policy = make(retry_policy=RetryPolicy(base=30.0, cap=30.0, jitter=False))
    policy.failed(0.0, None)
    tokens = [policy.flush_started() for _ in range(3)]
    now = 1.0
    for _ in tokens:
        assert policy.decide(now, pending=1, retrying=True, oldest_age=0.0) == SEND
        policy.failed(now, None)
        now += 0.001
    assert policy.decide(now, pending=1, retrying=True, oldest_age=0.0).backing_off
    # A flush that ends without using its cut gives it to nobody.
    policy.flush_ended(tokens[0])
    fresh = policy.flush_started()
    assert policy.decide(now, pending=1, retrying=True, oldest_age=0.0) == SEND
    for token in (*tokens[1:], fresh):
        policy.flush_ended(token)


def test_stopping_sends_at_once_paces_failures_and_stops_at_the_deadline() -> None:
    policy = make(retry_policy=RetryPolicy(base=30.0, cap=30.0, jitter=False))
    policy.failed(0.0, None)
    policy.stop(deadline=5.0, now=0.0)
    assert policy.decide(DRAIN_PAUSE, pending=3, retrying=True, oldest_age=0.0) == SEND
    policy.failed(1.0, None)
    paced = policy.decide(1.0, pending=3, retrying=True, oldest_age=0.0)
    assert not paced.send and paced.seconds == pytest.approx(DRAIN_PAUSE)
    assert policy.decide(5.0, pending=3, retrying=True, oldest_age=0.0) == STOP
    assert policy.decide(2.0, pending=0, retrying=False, oldest_age=None) == STOP


def test_an_earlier_stop_deadline_wins_unless_it_has_passed() -> None:
    policy = make()
    policy.stop(10.0, now=0.0)
    policy.stop(3.0, now=0.0)
    policy.stop(20.0, now=1.0)
    assert policy.stop_deadline == 3.0
    policy.stop(25.0, now=4.0)  # the drain ran out of time: the exit drain gets its own budget
    assert policy.stop_deadline == 25.0


@pytest.mark.parametrize(
    ("result", "size", "verdict"),
    [
        (SendResult(True, 200), 3, Verdict.DELIVERED),
        (SendResult(False, 400), 2, Verdict.SPLIT),
        (SendResult(False, 413), 2, Verdict.SPLIT),
        (SendResult(False, 400), 1, Verdict.REJECTED),
        (SendResult(False, 413), 1, Verdict.REJECTED),
        (SendResult(False, None), 1, Verdict.RETRY),
        (SendResult(False, 408), 1, Verdict.RETRY),
        (SendResult(False, 429), 1, Verdict.RETRY),
        (SendResult(False, 503), 9, Verdict.RETRY),
        (SendResult(False, 401), 9, Verdict.REJECTED),
    ],
)
def test_judging_an_answer(result: SendResult, size: int, verdict: Verdict) -> None:
    assert DeliveryPolicy.judge(result, size) is verdict


def test_rejection_reasons() -> None:
    assert DeliveryPolicy.rejection_reason(SendResult(False, 413)) == "oversize"
    assert DeliveryPolicy.rejection_reason(SendResult(False, 401)) == "rejected_401"


def test_the_requeue_limit_keeps_the_first_events() -> None:
    events = list(range(12))
    assert make(requeue_limit=5).split_requeue(events) == (events[:5], events[5:])
    assert make(requeue_limit=None).split_requeue(events) == (events, [])
    assert make(requeue_limit=0).split_requeue(events) == ([], events)
