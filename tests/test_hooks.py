"""before_send: on the worker thread; a drop and a failure are counted and never sent."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from analytics_queue import AnalyticsQueue
from analytics_queue._worker import WORKER_NAME
from analytics_queue.testing import CaptureServer

MakeQueue = Callable[..., AnalyticsQueue]


@pytest.fixture
def make_queue(capture_server: CaptureServer) -> Iterator[MakeQueue]:
    made: list[AnalyticsQueue] = []

    def make(**options: Any) -> AnalyticsQueue:
        queue = AnalyticsQueue(
            api_key="phc_hooks", host=capture_server.url, flush_interval=60.0, **options
        )
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.shutdown(timeout=2.0)


def test_before_send_changes_the_event_on_the_worker_thread(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    threads: list[str] = []

    def scrub(event: dict[str, Any]) -> dict[str, Any]:
        threads.append(threading.current_thread().name)
        event["properties"].pop("email", None)
        event["properties"]["scrubbed"] = True
        return event

    queue = make_queue(before_send=scrub)
    assert queue.track("signup", distinct_id="u", properties={"email": "a@b.c", "plan": "pro"})
    assert threads == []  # not on the caller's thread
    assert queue.flush(timeout=10)
    (event,) = capture_server.wait_for(1, timeout=10)
    assert "email" not in event.properties
    assert event.properties["scrubbed"] is True and event.properties["plan"] == "pro"
    assert threads == [WORKER_NAME]


def test_none_drops_the_event_and_counts_it_as_before_send(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    queue = make_queue(before_send=lambda e: None if e["event"] == "noise" else e)
    for name in ("kept", "noise", "noise", "kept_too"):
        assert queue.track(name, distinct_id="u")
    assert queue.flush(timeout=10)
    assert [e.event for e in capture_server.wait_for(2, timeout=10)] == ["kept", "kept_too"]
    metrics = queue.metrics()
    assert metrics.failed_by_reason == {"before_send": 2}
    assert metrics.delivered == 2 and metrics.queued == 4 and metrics.queue_size == 0


@pytest.mark.parametrize(
    "hook",
    [
        pytest.param(lambda e: e["properties"]["missing"], id="raises"),
        pytest.param(lambda e: [e], id="not-a-dict"),
        pytest.param(lambda e: {**e, "uuid": "not-a-uuid"}, id="bad-uuid"),
        pytest.param(lambda e: {**e, "distinct_id": ""}, id="no-distinct-id"),
    ],
)
def test_a_failing_hook_drops_the_event_unsent_and_logs_once(
    make_queue: MakeQueue,
    capture_server: CaptureServer,
    caplog: pytest.LogCaptureFixture,
    hook: Callable[[dict[str, Any]], Any],
) -> None:
    queue = make_queue(before_send=hook)
    with caplog.at_level(logging.WARNING, logger="analytics_queue"):
        for _ in range(3):
            assert queue.track("secret", distinct_id="u", properties={"email": "a@b.c"})
        assert queue.flush(timeout=10)
    assert capture_server.events() == []
    assert queue.metrics().failed_by_reason == {"before_send_error": 3}
    assert queue.metrics().failure_rate == 100.0  # a broken hook is a failure
    warnings = [r for r in caplog.records if r.name == "analytics_queue.hooks"]
    assert len(warnings) == 1
    assert "a@b.c" not in caplog.text  # no payload above DEBUG


def test_sampling_recipe_keeps_about_the_rate(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    import random

    rng = random.Random(7)

    def sample(event: dict[str, Any]) -> dict[str, Any] | None:
        if event["event"] == "page_viewed" and rng.random() >= 0.1:
            return None
        return event

    queue = make_queue(before_send=sample)
    for _ in range(1000):
        queue.track("page_viewed", distinct_id="u")
    queue.track("signup", distinct_id="u")
    assert queue.flush(timeout=20)
    metrics = queue.metrics()
    kept = metrics.delivered
    assert 50 < kept < 160  # 10 % of 1000 page views, plus the signup
    assert metrics.failed_by_reason == {"before_send": 1001 - kept}
    # Sampling is the app's choice: the pipeline is still healthy.
    assert metrics.delivery_rate == 100.0 and metrics.failure_rate == 0.0
    assert queue.health().status == "healthy"
    assert "signup" in {e.event for e in capture_server.wait_for(kept, timeout=10)}


def test_a_hook_that_changes_context_values_in_place_changes_one_event_only(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    import analytics_queue

    def mangle(event: dict[str, Any]) -> dict[str, Any]:
        event["properties"]["$context_tags"].append("mangled")
        event["properties"]["request"]["seen"] = True
        return event

    queue = make_queue(before_send=mangle)
    with analytics_queue.new_context():
        analytics_queue.tag("request", {"id": "r-1"})
        assert queue.track("first", distinct_id="u")
        assert queue.track("second", distinct_id="u")
    assert queue.flush(timeout=10)
    for event in capture_server.wait_for(2, timeout=10):
        assert event.properties["$context_tags"] == ["request", "mangled"]
        assert event.properties["request"] == {"id": "r-1", "seen": True}
