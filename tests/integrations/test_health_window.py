"""Health that heals: a failed batch counts against health only while it is in the window."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from flask import Flask

from analytics_queue import AnalyticsQueue
from analytics_queue.flask import EXTENSION_KEY, FlaskAnalytics
from analytics_queue.testing import CaptureServer

TEST_KEY = "phc_integration_tests"


@pytest.fixture
def app(capture_server: CaptureServer) -> Iterator[Flask]:
    app = Flask("health_window")
    app.config.update(
        POSTHOG_API_KEY=TEST_KEY,
        POSTHOG_HOST=capture_server.url,
        ANALYTICS_QUEUE_HEALTH_WINDOW=2.0,
        ANALYTICS_QUEUE_BATCH_SIZE=20,
        ANALYTICS_QUEUE_FLUSH_INTERVAL=60.0,
        ANALYTICS_QUEUE_SHUTDOWN_TIMEOUT=2.0,
    )
    FlaskAnalytics(app)
    yield app
    app.extensions[EXTENSION_KEY].shutdown(timeout=2.0)


def wait_until(condition: Callable[[], bool], deadline: float) -> bool:
    """Check ``condition`` every 50 ms until it holds or the monotonic ``deadline`` passes.

    The window empties with the passing of time, not on an event: this is the wait for it.
    """
    pause = threading.Event()
    while True:
        if condition():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        pause.wait(min(0.05, remaining))


def test_after_a_503_and_50_delivered_events_health_is_healthy_again_within_3_s(
    app: Flask, capture_server: CaptureServer
) -> None:
    queue: AnalyticsQueue = app.extensions[EXTENSION_KEY]
    client = app.test_client()
    capture_server.fail_with(503, times=1)
    for i in range(20):  # one batch: PostHog answers 503; requeue_limit 5 keeps 5 of them
        assert queue.track("blip", distinct_id="u", properties={"i": i})
    capture_server.wait_for_requests(1, timeout=10)
    failed_at = time.monotonic()
    assert queue.flush(timeout=10)
    blip = client.get("/analytics/health")
    assert blip.status_code == 503, blip.get_json()
    assert "delivery_rate" in [r["code"] for r in blip.get_json()["reasons"]]

    for i in range(50):
        assert queue.track("after", distinct_id="u", properties={"i": i})
    assert queue.flush(timeout=10)
    assert len(capture_server.events("after")) == 50
    metrics = queue.metrics()
    assert (metrics.delivered, metrics.failed) == (55, 15)

    assert wait_until(lambda: queue.health().status == "healthy", failed_at + 3.0), (
        queue.health().to_dict()
    )
    response = client.get("/analytics/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "healthy" and body["reasons"] == []
    # The lifetime figures still tell the whole story.
    assert body["metrics"]["failed_by_reason"] == {"retry_limit": 15}
    assert body["metrics"]["window_failed"] == 0
