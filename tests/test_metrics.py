"""Health verdicts from metrics snapshots, by the documented thresholds."""

from __future__ import annotations

import dataclasses

import pytest

from analytics_queue.metrics import Counters, ErrorRecord, Metrics, evaluate_health


def snapshot(**changes: object) -> Metrics:
    base = Counters().snapshot(queued=0, queue_size=0, worker_alive=True)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({}, "healthy"),
        ({"delivery_rate": 99.5, "failure_rate": 0.5, "queue_size": 99}, "healthy"),
        ({"delivery_rate": 98.0, "failure_rate": 2.0}, "degraded"),
        ({"queue_size": 100}, "degraded"),
        ({"queue_size": 499}, "degraded"),
        ({"queue_size": 500}, "critical"),
        ({"delivery_rate": 90.0, "failure_rate": 10.0}, "critical"),
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
    assert any("503 pipeline failing" in r for r in health.reasons)


def test_local_mode_and_uwsgi_notes() -> None:
    health = evaluate_health(snapshot(), mode="local", notes=["no API key", "uWSGI: die-on-term"])
    assert health.mode == "local" and health.status == "degraded"
    assert health.reasons == ["no API key", "uWSGI: die-on-term"]
    assert health.to_dict()["mode"] == "local"


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
