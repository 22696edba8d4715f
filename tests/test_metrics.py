"""Health verdicts from metrics snapshots: thresholds, reason codes, the sliding window and the
stall check, all with an injected clock."""

from __future__ import annotations

import dataclasses

import pytest

from analytics_queue.metrics import (
    Counters,
    DeliveryWindow,
    ErrorRecord,
    Metrics,
    Reason,
    evaluate_health,
)


def snapshot(**changes: object) -> Metrics:
    base = Counters().snapshot(queued=0, queue_size=0, worker_alive=True)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({}, "healthy"),
        ({"window_delivery_rate": 99.5, "window_failure_rate": 0.5, "queue_size": 99}, "healthy"),
        ({"window_delivery_rate": 98.0, "window_failure_rate": 2.0}, "degraded"),
        ({"queue_size": 100}, "degraded"),
        ({"queue_size": 499}, "degraded"),
        ({"queue_size": 500}, "critical"),
        ({"window_delivery_rate": 90.0, "window_failure_rate": 10.0}, "critical"),
        # Lifetime rates are facts in the metrics, not what the verdict judges.
        ({"delivery_rate": 25.0, "failure_rate": 75.0}, "healthy"),
        ({"queue_size": 3, "worker_alive": False}, "critical"),
        ({"queue_size": 0, "worker_alive": False}, "healthy"),
    ],
)
def test_thresholds(changes: dict[str, object], status: str) -> None:
    health = evaluate_health(snapshot(**changes), mode="posthog")
    assert health.status == status
    assert bool(health.reasons) is (status != "healthy")


def test_a_failing_send_makes_it_degraded_with_the_message() -> None:
    counters = Counters()
    counters.record_send(seconds=0.1, error=ErrorRecord(503, "503 pipeline failing", 0.0))
    health = evaluate_health(
        counters.snapshot(queued=5, queue_size=5, worker_alive=True), mode="posthog"
    )
    assert health.status == "degraded"
    assert health.codes == ["send_failing"]
    assert "503 pipeline failing" in health.reasons[0].message


def test_local_mode_and_uwsgi_notes() -> None:
    notes = [Reason("local_mode", "no API key"), Reason("uwsgi_no_die_on_term", "uWSGI: ...")]
    health = evaluate_health(snapshot(), mode="local", notes=notes)
    assert health.mode == "local" and health.status == "degraded"
    assert health.reasons == notes
    assert health.to_dict()["mode"] == "local"
    assert health.to_dict()["reasons"] == [
        {"code": "local_mode", "message": "no API key"},
        {"code": "uwsgi_no_die_on_term", "message": "uWSGI: ..."},
    ]
    assert str(notes[0]) == "no API key"


def test_rates_are_percent_of_final_events() -> None:
    counters = Counters()
    counters.record_send(seconds=0.01, delivered=95, delivery_seconds=9.5)
    counters.fail("retry_limit", 5)
    m = counters.snapshot(queued=100, queue_size=0, worker_alive=True)
    assert (m.delivery_rate, m.failure_rate) == (95.0, 5.0)
    assert m.avg_delivery_ms == pytest.approx(100.0)
    assert m.failed_by_reason == {"retry_limit": 5}
    assert set(m.to_dict()) >= {
        "queued",
        "delivered",
        "failed",
        "failed_by_reason",
        "refused",
        "refused_by_reason",
        "retried",
        "batches_sent",
        "batches_failed",
        "queue_size",
        "peak_queue_size",
        "avg_delivery_ms",
        "avg_send_ms",
        "delivery_rate",
        "failure_rate",
        "last_error",
        "last_success_at",
        "consecutive_failures",
        "worker_alive",
    }


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_window_forgets_outcomes_older_than_its_length() -> None:
    window = DeliveryWindow(300)  # buckets of one second
    window.add(0.0, failed=3)
    window.add(100.0, delivered=7)
    assert window.totals(100.0) == (7, 3)
    assert window.totals(300.5) == (7, 3)  # the failures' bucket ends at 1 s: still inside
    assert window.totals(301.0) == (7, 0)  # ... and leaves once it ended 300 s ago
    assert window.totals(401.0) == (0, 0)
    window.add(401.0)  # nothing happened: nothing kept
    assert window.totals(401.0) == (0, 0)


def test_a_short_window_has_fine_buckets_and_a_long_one_at_most_a_second() -> None:
    short = DeliveryWindow(2)
    short.add(0.0, failed=1)
    assert short.totals(2.0) == (0, 1)
    assert short.totals(2.01) == (0, 0)  # buckets of 2/300 s
    long = DeliveryWindow(3600)
    for second in range(0, 3600, 1):
        long.add(second + 0.5, delivered=1)
    assert long.totals(3599.9) == (3600, 0)
    assert len(long._buckets) <= 3600


def test_a_clock_that_steps_back_does_not_lose_counts() -> None:
    window = DeliveryWindow(10)
    window.add(5.0, delivered=1)
    window.add(3.0, delivered=1)
    assert window.totals(5.0) == (2, 0)


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf")])
def test_a_window_needs_a_positive_finite_length(seconds: float) -> None:
    with pytest.raises(ValueError, match="seconds"):
        DeliveryWindow(seconds)


def test_health_heals_once_a_failed_batch_leaves_the_window() -> None:
    # One 503 on a batch of 20 with requeue_limit 5: 15 fail at once, 5 go again.
    clock = FakeClock()
    counters = Counters(health_window=2, clock=clock)
    counters.record_send(seconds=0.01, error=ErrorRecord(503, "503", 0.0))
    counters.fail("retry_limit", 15)
    clock.now += 0.5
    counters.record_send(seconds=0.01, delivered=5)

    def verdict() -> str:
        return evaluate_health(
            counters.snapshot(queued=20, queue_size=0, worker_alive=True), mode="posthog"
        ).status

    assert verdict() == "critical"  # 5 of 20 delivered within the window
    clock.now += 0.5
    counters.record_send(seconds=0.01, delivered=50)
    assert verdict() == "critical"  # 55 of 70: the failures are still inside
    clock.now += 1.1
    assert verdict() == "healthy"  # the failed batch left the window
    m = counters.snapshot(queued=70, queue_size=0, worker_alive=True)
    assert (m.window_delivered, m.window_failed) == (55, 0)
    assert (m.delivered, m.failed) == (55, 15)
    assert m.delivery_rate == pytest.approx(100 * 55 / 70)  # lifetime figures stay as facts
    assert m.health_window == 2


def test_failures_inside_the_window_keep_it_degraded_until_they_leave() -> None:
    clock = FakeClock()
    counters = Counters(health_window=300, clock=clock)
    counters.fail("retry_limit", 2)
    counters.record_send(seconds=0.01, delivered=98)
    health = evaluate_health(
        counters.snapshot(queued=100, queue_size=0, worker_alive=True), mode="posthog"
    )
    assert health.status == "degraded"
    assert health.codes == ["delivery_rate", "failure_rate"]
    assert "over the last 300 s" in health.reasons[0].message
    clock.now += 301
    health = evaluate_health(
        counters.snapshot(queued=100, queue_size=0, worker_alive=True), mode="posthog"
    )
    assert health.status == "healthy" and health.reasons == []


@pytest.mark.parametrize(
    ("age", "status"),
    [
        (None, "healthy"),
        (3.0, "healthy"),  # waiting for its batch: normal
        (15.0, "healthy"),  # exactly three flush intervals
        (15.1, "degraded"),
        (60.0, "degraded"),
        (60.1, "critical"),
    ],
)
def test_an_old_waiting_event_means_delivery_is_stalled(age: float | None, status: str) -> None:
    health = evaluate_health(
        snapshot(queue_size=3), mode="posthog", oldest_waiting_age=age, flush_interval=5.0
    )
    assert health.status == status
    assert health.codes == ([] if status == "healthy" else ["delivery_stalled"])


def test_the_stall_check_needs_waiting_events_and_the_flush_interval() -> None:
    assert (
        evaluate_health(
            snapshot(queue_size=0), mode="posthog", oldest_waiting_age=999.0, flush_interval=5.0
        ).status
        == "healthy"
    )
    assert (
        evaluate_health(snapshot(queue_size=3), mode="posthog", oldest_waiting_age=999.0).status
        == "healthy"
    )
