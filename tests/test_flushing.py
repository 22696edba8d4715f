"""flushing(): a context manager and a decorator that flush with a deadline when a block ends."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import analytics_queue
import analytics_queue._default
from analytics_queue import AnalyticsQueue
from analytics_queue.testing import CaptureServer


@pytest.fixture
def queue(capture_server: CaptureServer) -> Iterator[AnalyticsQueue]:
    instance = AnalyticsQueue(
        api_key="phc_flushing_test", host=capture_server.url, flush_interval=60, batch_size=1000
    )
    yield instance
    instance.shutdown(timeout=2)


def test_the_block_ends_with_its_events_delivered(
    queue: AnalyticsQueue, capture_server: CaptureServer
) -> None:
    with analytics_queue.flushing(timeout=5, instance=queue):
        for i in range(25):
            queue.track("block", distinct_id="u", properties={"i": i})
        assert capture_server.events() == []  # flush_interval=60: nothing sent yet
    assert len(capture_server.events("block")) == 25


def test_a_decorated_function_delivers_on_every_call(
    queue: AnalyticsQueue, capture_server: CaptureServer
) -> None:
    @analytics_queue.flushing(timeout=5, instance=queue)
    def task(n: int) -> int:
        for i in range(n):
            queue.track("task", distinct_id="u", properties={"i": i})
        return n

    assert task(3) == 3
    assert len(capture_server.events("task")) == 3
    assert task(4) == 4
    assert len(capture_server.events("task")) == 7


def test_a_raising_block_still_flushes_and_its_exception_goes_through(
    queue: AnalyticsQueue, capture_server: CaptureServer
) -> None:
    with pytest.raises(KeyError), analytics_queue.flushing(timeout=5, instance=queue):
        queue.track("before_error", distinct_id="u")
        raise KeyError("boom")
    assert len(capture_server.events("before_error")) == 1


def test_the_deadline_holds_when_the_server_never_answers(
    queue: AnalyticsQueue, capture_server: CaptureServer
) -> None:
    capture_server.hang()
    started = time.monotonic()
    with analytics_queue.flushing(timeout=0.3, instance=queue):
        queue.track("stuck", distinct_id="u")
    assert time.monotonic() - started < 3  # 0.3 s asked; a generous margin
    assert queue.metrics().delivered == 0
    capture_server.clear_faults()


def test_the_default_instance_is_flushed(
    capture_server: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(analytics_queue._default, "_default", None)
    queue = analytics_queue.configure(
        api_key="phc_flushing_test", host=capture_server.url, flush_interval=60, batch_size=1000
    )
    try:
        with analytics_queue.flushing(timeout=5):
            analytics_queue.track("default", distinct_id="u")
        assert len(capture_server.events("default")) == 1
    finally:
        queue.shutdown(timeout=2)


def test_no_default_instance_is_built_just_to_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(analytics_queue._default, "_default", None)
    with analytics_queue.flushing(timeout=1):
        pass
    assert analytics_queue._default._default is None
