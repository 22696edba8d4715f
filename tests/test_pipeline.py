"""Pipelining: the next batch is serialized while a request waits for its answer.

A recording transport wraps the real PostHog one (real HTTP to the capture server) and holds the
first request at ``begin`` until the test has queued a second batch, so the order of the steps
is fixed without any sleep.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from analytics_queue import AnalyticsQueue
from analytics_queue.retry import RetryPolicy
from analytics_queue.testing import CaptureServer
from analytics_queue.transport import InFlight, PostHogTransport, PreparedBody, SendResult

KEY = "phc_pipeline"
BATCH = 5


class RecordingTransport:
    """The PostHog transport, recording each step; the first ``begin`` waits for ``release``."""

    def __init__(self, url: str) -> None:
        self.inner = PostHogTransport(KEY, url, gzip=True)
        self.steps: list[tuple[str, int]] = []
        self.sizes: dict[int, int] = {}
        self.entered = threading.Event()
        self.release = threading.Event()

    def prepare(self, elements: Sequence[bytes]) -> PreparedBody:
        body = self.inner.prepare(elements)
        self.sizes[id(body)] = len(elements)
        self.steps.append(("prepare", len(elements)))
        return body

    def begin(self, prepared: PreparedBody, timeout: float) -> InFlight:
        size = self.sizes.pop(id(prepared))
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(30)
        self.steps.append(("begin", size))
        return self.inner.begin(prepared, timeout)

    def finish(self, request: InFlight) -> SendResult:
        result = self.inner.finish(request)
        self.steps.append(("finish", result.status or 0))
        return result

    def send(self, elements: Sequence[bytes], timeout: float) -> SendResult:
        return self.finish(self.begin(self.prepare(elements), timeout))

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def transport(capture_server: CaptureServer) -> Iterator[RecordingTransport]:
    recording = RecordingTransport(capture_server.url)
    yield recording
    recording.release.set()


def two_batches(queue: AnalyticsQueue, transport: RecordingTransport) -> None:
    """Queue one batch, hold its request at begin, queue a second batch, release the first."""
    for i in range(BATCH):
        assert queue.track("first", distinct_id="u", properties={"i": i})
    assert transport.entered.wait(30)
    for i in range(BATCH):
        assert queue.track("second", distinct_id="u", properties={"i": i})
    transport.release.set()


def make_queue(transport: RecordingTransport, **options: object) -> AnalyticsQueue:
    return AnalyticsQueue(
        api_key=KEY,
        batch_size=BATCH,
        flush_interval=60,
        transport=transport,
        retry_policy=RetryPolicy(base=0.05, cap=0.05, jitter=False),
        **options,  # type: ignore[arg-type]
    )


def test_the_next_batch_is_prepared_while_the_request_waits(
    capture_server: CaptureServer, transport: RecordingTransport
) -> None:
    queue = make_queue(transport)
    try:
        two_batches(queue, transport)
        assert queue.flush(timeout=30)
    finally:
        queue.shutdown(timeout=10)
    assert transport.steps == [
        ("prepare", BATCH),
        ("begin", BATCH),
        ("prepare", BATCH),  # the second batch, serialized before the first answer is read
        ("finish", 200),
        ("begin", BATCH),
        ("finish", 200),
    ]
    assert len(capture_server.uuids()) == 2 * BATCH
    assert capture_server.duplicates() == []
    metrics = queue.metrics()
    assert (metrics.delivered, metrics.failed, metrics.retried, metrics.queue_size) == (
        2 * BATCH,
        0,
        0,
        0,
    )


def test_a_retry_puts_the_batch_ahead_back_in_line_unsent(
    capture_server: CaptureServer, transport: RecordingTransport
) -> None:
    capture_server.fail_with(503, times=1)
    queue = make_queue(transport)
    try:
        two_batches(queue, transport)
        assert queue.flush(timeout=30)
    finally:
        queue.shutdown(timeout=10)
    assert transport.steps[:4] == [
        ("prepare", BATCH),
        ("begin", BATCH),
        ("prepare", BATCH),
        ("finish", 503),
    ]
    # After the backoff, the failed batch and the one prepared ahead go together, once.
    assert transport.steps[4:] == [("prepare", 2 * BATCH), ("begin", 2 * BATCH), ("finish", 200)]
    assert sorted(e.properties["i"] for e in capture_server.events("second")) == list(range(BATCH))
    assert capture_server.duplicates() == []
    metrics = queue.metrics()
    # Only the events of the failed attempt count as retried; each event is counted once.
    assert (metrics.delivered, metrics.retried, metrics.failed, metrics.queue_size) == (
        2 * BATCH,
        BATCH,
        0,
        0,
    )


def test_shutdown_keeps_its_deadline_with_a_batch_ahead_and_loses_nothing(
    capture_server: CaptureServer, transport: RecordingTransport
) -> None:
    capture_server.hang()
    queue = make_queue(transport, timeout=30.0)
    try:
        two_batches(queue, transport)
        started = time.monotonic()
        assert not queue.shutdown(timeout=1.0)
        took = time.monotonic() - started
    finally:
        capture_server.clear_faults()
    assert took < 1.0 + 1.0  # the request's read timeout is cut to the stop deadline
    assert ("prepare", BATCH) in transport.steps[2:]  # the second batch was prepared ahead
    metrics = queue.metrics()
    # Not delivered, not failed, not lost: both batches are still unfinished.
    assert (metrics.queued, metrics.delivered, metrics.failed) == (2 * BATCH, 0, 0)
    assert metrics.queue_size == 2 * BATCH
