"""AnalyticsQueue end to end: real HTTP to the local capture server, no sleeps."""

from __future__ import annotations

import enum
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

import analytics_queue
import analytics_queue._default
from analytics_queue import AnalyticsQueue, InvalidEventError, OversizeError, UnserializableError
from analytics_queue.retry import RetryPolicy
from analytics_queue.testing import CaptureServer
from analytics_queue.transport import SendResult

KEY = "phc_test_key_0123456789"
FAST_RETRY = RetryPolicy(base=0.05, cap=0.05, jitter=False)

MakeQueue = Callable[..., AnalyticsQueue]


@pytest.fixture
def make_queue(capture_server: CaptureServer) -> Iterator[MakeQueue]:
    """Build queues that talk to the capture server; every one is shut down afterwards."""
    made: list[AnalyticsQueue] = []

    def make(**options: Any) -> AnalyticsQueue:
        options.setdefault("api_key", KEY)
        options.setdefault("host", capture_server.url)
        options.setdefault("flush_interval", 60.0)
        options.setdefault("retry_policy", FAST_RETRY)
        queue = AnalyticsQueue(**options)
        made.append(queue)
        return queue

    yield make
    capture_server.clear_faults()
    for queue in made:
        queue.shutdown(timeout=2.0)


def track_many(queue: AnalyticsQueue, count: int, event: str = "e") -> list[bool]:
    return [queue.track(event, distinct_id="user-1", properties={"i": i}) for i in range(count)]


def test_a_full_batch_is_sent_without_waiting_for_the_timer(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    queue = make_queue(batch_size=10, flush_interval=3600.0)
    assert all(track_many(queue, 10))
    events = capture_server.wait_for(10, timeout=10)
    assert sorted(e.properties["i"] for e in events) == list(range(10))
    assert len(capture_server.requests) == 1


def test_a_partial_batch_is_sent_flush_interval_after_tracking(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    queue = make_queue(batch_size=10, flush_interval=0.3)
    started = time.time()
    assert all(track_many(queue, 3))
    events = capture_server.wait_for(3, timeout=10)
    assert len(events) == 3 and len(capture_server.requests) == 1
    # Not sent before the interval was up (behaviour, not speed: the margin is generous).
    assert capture_server.requests[0].received_at - started >= 0.25


def test_flush_sends_what_waits_and_reports_success(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    queue = make_queue()
    track_many(queue, 3)
    assert queue.flush(timeout=10) is True
    assert len(capture_server.events()) == 3
    metrics = queue.metrics()
    assert (metrics.queued, metrics.delivered, metrics.queue_size) == (3, 3, 0)
    assert metrics.batches_sent == 1 and metrics.last_success_at is not None


def test_the_wire_carries_uuid_timestamp_enrichment_and_captured_properties(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    queue = make_queue(app_version="2.0.0", environment="test")
    properties: dict[str, Any] = {"nested": {"tags": ["a"]}}
    mine = uuid.uuid4()
    assert queue.track("signup", distinct_id=42, properties=properties, uuid=mine)
    properties["nested"]["tags"].append("changed after track")
    assert queue.flush(timeout=10)
    (event,) = capture_server.events("signup")
    assert event.distinct_id == "42" and event.uuid == str(mine)
    assert event.properties["nested"] == {"tags": ["a"]}
    assert event.properties["$lib"] == "analytics_queue"
    assert event.properties["app_version"] == "2.0.0"
    assert event.properties["environment"] == "test"
    assert event.properties["queued_at"] == event.timestamp
    assert event.request.api_key == KEY
    assert event.request.sent_at is not None


def test_requeue_puts_exactly_the_first_five_events_back(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    capture_server.fail_with(503, times=1)
    queue = make_queue(batch_size=10, requeue_limit=5)
    track_many(queue, 10)
    delivered = capture_server.wait_for(5, timeout=10)
    failed_request, retry_request = capture_server.requests[:2]
    assert failed_request.status == 503 and retry_request.status == 200
    failed_uuids = [e["uuid"] for e in failed_request.raw_events]
    assert len(failed_uuids) == 10
    assert [e["uuid"] for e in retry_request.raw_events] == failed_uuids[:5]
    assert [e.uuid for e in delivered] == failed_uuids[:5]
    assert queue.flush(timeout=10)
    metrics = queue.metrics()
    assert metrics.failed_by_reason == {"retry_limit": 5}
    assert metrics.retried == 5 and metrics.delivered == 5
    assert metrics.queued == metrics.delivered + metrics.failed + metrics.queue_size


def test_requeue_limit_none_retries_every_event(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    capture_server.fail_with(500, times=2)
    queue = make_queue(batch_size=8, requeue_limit=None)
    track_many(queue, 8)
    capture_server.wait_for(8, timeout=10)
    assert queue.metrics().failed == 0
    assert capture_server.duplicates() == []


def test_retry_after_is_respected(make_queue: MakeQueue, capture_server: CaptureServer) -> None:
    capture_server.fail_with(429, times=1, retry_after=1)
    queue = make_queue(batch_size=1)
    queue.track("e", distinct_id="u")
    capture_server.wait_for(1, timeout=10)
    first, second = capture_server.requests[:2]
    assert first.status == 429
    assert second.received_at - first.received_at >= 0.95


def test_flush_returns_false_when_a_retry_after_outlasts_its_timeout(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    capture_server.fail_with(429, times=1, retry_after=30)
    queue = make_queue(batch_size=1)
    queue.track("e", distinct_id="u")
    capture_server.wait_for_requests(1, timeout=10)
    started = time.monotonic()
    assert queue.flush(timeout=0.5) is False
    assert time.monotonic() - started < 0.5 + 0.5
    assert len(capture_server.requests) == 1  # the Retry-After was honoured


def test_flush_cuts_a_backoff_short(make_queue: MakeQueue, capture_server: CaptureServer) -> None:
    capture_server.fail_with(503, times=1)
    queue = make_queue(batch_size=1, retry_policy=RetryPolicy(base=30, cap=30, jitter=False))
    queue.track("e", distinct_id="u")
    capture_server.wait_for_requests(1, timeout=10)
    assert queue.flush(timeout=10) is True  # without flush() the retry would wait 30 s
    assert len(capture_server.events()) == 1


def test_401_fails_the_batch_without_retrying(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    capture_server.fail_with(401)
    queue = make_queue()
    track_many(queue, 3)
    assert queue.flush(timeout=10) is True  # every event reached a final state: failed
    assert len(capture_server.requests) == 1
    metrics = queue.metrics()
    assert metrics.failed_by_reason == {"rejected_401": 3} and metrics.retried == 0
    assert metrics.last_error is not None and metrics.last_error["status"] == 401


def test_413_splits_the_batch_in_halves(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    capture_server.fail_with(413, times=1)
    queue = make_queue()
    track_many(queue, 10)
    assert queue.flush(timeout=10)
    statuses = [(r.status, r.event_count) for r in capture_server.requests]
    assert statuses == [(413, 10), (200, 5), (200, 5)]
    assert len(capture_server.uuids()) == 10 and queue.metrics().failed == 0


def test_413_on_one_event_fails_it_as_oversize(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    capture_server.fail_with(413)
    queue = make_queue()
    queue.track("e", distinct_id="u")
    assert queue.flush(timeout=10)
    assert queue.metrics().failed_by_reason == {"oversize": 1}


def test_400_bisects_so_that_good_events_still_arrive(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    capture_server.fail_with(400, times=2)
    queue = make_queue()
    track_many(queue, 4)
    assert queue.flush(timeout=10)
    # [4] -> 400, [2] -> 400, then [1] [1] and the other [2] arrive.
    assert [r.status for r in capture_server.requests] == [400, 400, 200, 200, 200]
    assert len(capture_server.events()) == 4


def test_a_bad_event_is_refused_and_takes_no_good_event_with_it(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    queue = make_queue()
    results = [
        queue.track("good", distinct_id="u", properties={"n": 1}),
        queue.track("nan", distinct_id="u", properties={"n": math.nan}),
        queue.track("good", distinct_id="u", properties={"n": 2}),
        queue.track("object", distinct_id="u", properties={"o": object()}),
        queue.track("good", distinct_id="u", properties={"n": 3}),
        queue.track("big", distinct_id="u", properties={"s": "x" * (2 * 1024 * 1024)}),
        queue.track("", distinct_id="u"),
        queue.track("good", distinct_id=["not", "an", "id"]),
        queue.track("good", distinct_id="u", properties={"n": 4}),
    ]
    assert results == [True, False, True, False, True, False, False, False, True]
    assert queue.flush(timeout=10)
    assert [e.properties["n"] for e in capture_server.events()] == [1, 2, 3, 4]
    metrics = queue.metrics()
    assert metrics.refused_by_reason == {"invalid": 4, "oversize": 1}
    assert metrics.delivered == 4 and metrics.worker_alive


def test_strict_mode_raises_naming_the_event_and_the_path(make_queue: MakeQueue) -> None:
    queue = make_queue(strict=True)
    with pytest.raises(TypeError, match=r'\'clicked\': properties\["when"\]\["at"\]'):
        queue.track("clicked", distinct_id="u", properties={"when": {"at": object()}})
    with pytest.raises(ValueError, match=r'properties\["ratio"\]'):
        queue.track("clicked", distinct_id="u", properties={"ratio": math.inf})
    with pytest.raises(OversizeError):
        queue.track("clicked", distinct_id="u", properties={"s": "x" * (2 * 1024 * 1024)})
    with pytest.raises(InvalidEventError):
        queue.track("clicked", distinct_id=3.5)
    assert isinstance(UnserializableError("x"), TypeError)
    assert queue.metrics().refused_by_reason == {"invalid": 3, "oversize": 1}


def test_sixteen_threads_deliver_every_event_exactly_once(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    threads_count, per_thread = 16, 5_000
    total = threads_count * per_thread
    queue = make_queue(max_queue_size=total, flush_interval=0.2)
    start = threading.Barrier(threads_count)
    refused: list[int] = []

    def produce(thread: int) -> None:
        start.wait()
        results = [
            queue.track("load", distinct_id=f"t{thread}", properties={"i": i})
            for i in range(per_thread)
        ]
        refused.append(results.count(False))

    workers = [threading.Thread(target=produce, args=(n,)) for n in range(threads_count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert sum(refused) == 0
    assert queue.flush(timeout=60)
    uuids = capture_server.uuids()
    assert len(uuids) == total and len(set(uuids)) == total
    assert capture_server.duplicates() == []
    metrics = queue.metrics()
    assert metrics.queued == total == metrics.delivered + metrics.failed + metrics.queue_size
    assert metrics.delivered == total


def test_the_queue_is_bounded_while_the_server_is_down(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    capture_server.down()
    queue = make_queue(max_queue_size=50, batch_size=1000)
    results = track_many(queue, 200)
    assert results.count(True) == 50 and results.count(False) == 150
    assert queue.queue_size == 50
    assert queue.metrics().refused_by_reason == {"queue_full": 150}
    capture_server.up()
    assert queue.flush(timeout=10)
    assert len(capture_server.events()) == 50


def test_the_queue_stays_bounded_while_the_worker_retries_against_a_down_server(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    capture_server.down()
    queue = make_queue(max_queue_size=100, batch_size=10, requeue_limit=None)
    for _ in range(20):
        track_many(queue, 100)
        metrics = queue.metrics()
        # The line holds at most the queue bound plus one request's worth being retried.
        assert metrics.queue_size <= 100 + 500
    assert queue.metrics().refused_by_reason["queue_full"] > 0
    assert queue.health().status in ("degraded", "critical")


def test_flush_keeps_its_deadline_when_the_server_never_answers(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    capture_server.hang()
    queue = make_queue(timeout=30.0)
    queue.track("e", distinct_id="u")
    started = time.monotonic()
    assert queue.flush(timeout=0.5) is False
    assert time.monotonic() - started < 0.5 + 0.1 + 0.4  # contract: +0.1 s; margin for a busy CI
    started = time.monotonic()
    assert queue.shutdown(timeout=0.5) is False
    assert time.monotonic() - started < 0.5 + 0.1 + 0.4


def test_shutdown_is_idempotent_and_track_refuses_afterwards(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    queue = make_queue()
    track_many(queue, 3)
    assert queue.shutdown(timeout=10) is True
    assert queue.shutdown(timeout=10) is True
    assert len(capture_server.events()) == 3
    assert queue.track("late", distinct_id="u") is False
    assert queue.metrics().refused_by_reason == {"shutdown": 1}
    assert not queue.metrics().worker_alive


def test_disabled_is_a_no_op(make_queue: MakeQueue, capture_server: CaptureServer) -> None:
    queue = make_queue(disabled=True)
    assert queue.track("e", distinct_id="u") is False
    assert queue.flush(timeout=1)
    assert capture_server.requests == []
    assert queue.metrics().refused_by_reason == {"disabled": 1}
    assert not queue.metrics().worker_alive


def test_the_worker_is_one_named_daemon_thread_started_by_the_first_track(
    make_queue: MakeQueue,
) -> None:
    def workers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "analytics-queue-worker"]

    before = len(workers())
    queue = make_queue()
    assert len(workers()) == before
    track_many(queue, 5)
    assert len(workers()) == before + 1
    assert all(t.daemon for t in workers())
    assert queue.metrics().worker_alive


def test_without_a_worker_flush_sends_on_the_calling_thread(
    make_queue: MakeQueue, capture_server: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    queue = make_queue()
    with monkeypatch.context() as patch:
        patch.setattr(threading.Thread, "start", refuse)
        assert queue.track("e", distinct_id="u") is True
    health = queue.health()
    assert health.status == "critical"
    assert health.codes == ["no_worker"]
    assert queue.flush(timeout=10)
    assert len(capture_server.events()) == 1
    assert queue.health().status == "healthy"


def test_local_mode_logs_a_summary_at_info_and_each_payload_at_debug(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("POSTHOG_API_KEY", raising=False)
    monkeypatch.delenv("ANALYTICS_QUEUE_API_KEY", raising=False)
    queue = AnalyticsQueue()
    try:
        with caplog.at_level(logging.INFO, logger="analytics_queue.local"):
            assert queue.track("signup", distinct_id="u-42", properties={"email": "a@b.example"})
            assert queue.flush(timeout=10)
        info = [r.getMessage() for r in caplog.records if r.name == "analytics_queue.local"]
        (line,) = info
        assert "1 event(s): signup" in line
        assert "u-42" not in line and "a@b.example" not in line  # no payload above DEBUG
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="analytics_queue.local"):
            assert queue.track("signup", distinct_id="u-42", properties={"plan": "pro"})
            assert queue.flush(timeout=10)
        debug = [
            r.getMessage()
            for r in caplog.records
            if r.name == "analytics_queue.local" and r.levelno == logging.DEBUG
        ]
        (payload,) = debug
        assert json.loads(payload)["properties"]["plan"] == "pro"
        health = queue.health()
        assert health.mode == "local"
        assert health.codes == ["local_mode"]
        assert health.reasons[0].message == "no API key: events are logged, not sent"
        assert queue.metrics().delivered == 2
    finally:
        queue.shutdown(timeout=2)


def test_our_own_log_lines_cannot_loop_back_into_track(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    queue = make_queue()
    looped: list[bool] = []

    class TrackingHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            looped.append(queue.track("log_line", distinct_id="logger"))

    handler = TrackingHandler(logging.WARNING)
    logger = logging.getLogger("analytics_queue")
    logger.addHandler(handler)
    try:
        capture_server.fail_with(401, times=1)  # the worker logs a WARNING for it
        queue.track("e", distinct_id="u")
        assert queue.flush(timeout=10)
    finally:
        logger.removeHandler(handler)
    assert looped and not any(looped)
    assert queue.metrics().refused_by_reason.get("reentrant") == len(looped)
    assert capture_server.events("log_line") == []


def test_the_api_key_appears_in_no_log_metric_or_health(
    make_queue: MakeQueue, capture_server: CaptureServer, caplog: pytest.LogCaptureFixture
) -> None:
    capture_server.fail_with(500, times=1, body=f"internal error for token {KEY}")
    queue = make_queue()
    with caplog.at_level(logging.DEBUG, logger="analytics_queue"):
        queue.track("e", distinct_id="u")
        queue.flush(timeout=10)
    texts = [
        caplog.text,
        json.dumps(queue.metrics().to_dict()),
        json.dumps(queue.health().to_dict()),
        repr(queue),
        repr(queue.config),
    ]
    assert queue.metrics().last_error is not None
    for text in texts:
        assert KEY not in text


def test_the_default_instance(capture_server: CaptureServer) -> None:
    previous = analytics_queue._default._default
    try:
        first = analytics_queue.configure(api_key=KEY, host=capture_server.url)
        assert analytics_queue.get_default() is first
        assert analytics_queue.track("default", distinct_id="u")
        assert analytics_queue.get_queue_size() == 1
        assert analytics_queue.flush(timeout=10)
        assert analytics_queue.get_metrics().delivered == 1
        assert analytics_queue.get_health().status == "healthy"
        assert analytics_queue.track("flushed by configure", distinct_id="u")
        second = analytics_queue.configure(api_key=KEY, host=capture_server.url)
        assert second is not first
        assert first.track("late", distinct_id="u") is False
        assert [e.event for e in capture_server.events()] == ["default", "flushed by configure"]
        assert analytics_queue.shutdown(timeout=5)
    finally:
        analytics_queue._default._default = previous


class ScriptedTransport:
    """Answers from a list: a SendResult, or an exception to raise."""

    def __init__(self, script: list[SendResult | Exception]) -> None:
        self.script = script
        self.batches: list[int] = []

    def send(self, elements: Sequence[bytes], timeout: float) -> SendResult:
        self.batches.append(len(elements))
        answer = self.script.pop(0) if self.script else SendResult(True, 200)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        pass


def test_a_transport_that_raises_neither_kills_the_worker_nor_loses_events() -> None:
    transport = ScriptedTransport([RuntimeError("bug in a custom sink")])
    queue = AnalyticsQueue(api_key=KEY, transport=transport, retry_policy=FAST_RETRY)
    try:
        for i in range(3):
            queue.track("e", distinct_id="u", properties={"i": i})
        assert queue.flush(timeout=10)
        metrics = queue.metrics()
        assert transport.batches == [3, 3]
        assert metrics.delivered == 3 and metrics.failed == 0 and metrics.worker_alive
        assert metrics.last_error is not None
        assert "RuntimeError" in metrics.last_error["message"]
    finally:
        queue.shutdown(timeout=2)


def test_flush_does_not_hammer_a_failing_server(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    capture_server.fail_with(503)
    queue = make_queue(retry_policy=RetryPolicy(base=1.0, cap=1.0, jitter=False))
    queue.track("e", distinct_id="u")
    assert queue.flush(timeout=1.5) is False
    # One attempt, then the backoff of the failure that happened during this flush (1 s).
    assert len(capture_server.requests) <= 3


def test_event_names_and_ids_may_be_str_enums(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    class Event(str, enum.Enum):
        SIGNUP = "signup"

    queue = make_queue()
    assert queue.track(Event.SIGNUP, distinct_id=Event.SIGNUP, properties={"kind": Event.SIGNUP})
    assert queue.flush(timeout=10)
    (event,) = capture_server.events()
    assert (event.event, event.distinct_id, event.properties["kind"]) == ("signup",) * 3


def test_a_hostile_object_never_makes_track_raise(make_queue: MakeQueue) -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("repr exploded")

        def __str__(self) -> str:
            raise RuntimeError("str exploded")

    queue = make_queue()
    assert queue.track(Hostile(), distinct_id="u") is False  # type: ignore[arg-type]
    assert queue.track("e", distinct_id=Hostile()) is False
    assert queue.track("e", distinct_id="u", properties={"h": Hostile()}) is False
    assert queue.metrics().refused_by_reason == {"invalid": 3}


def test_the_size_limit_is_measured_in_serialized_bytes(make_queue: MakeQueue) -> None:
    queue = make_queue(strict=True)
    # Few characters, many bytes: 4 bytes of UTF-8 each, or 6 once escaped.
    with pytest.raises(OversizeError):
        queue.track("e", distinct_id="u", properties={"s": "\U0001f600" * 300_000})
    with pytest.raises(OversizeError):
        queue.track("e", distinct_id="u", properties={"s": "\x01" * 200_000})
    # Many values, few bytes: 500 KB serialized is under the limit.
    assert queue.track("e", distinct_id="u", properties={"ids": [1] * 250_000})


def test_no_piece_of_the_key_survives_a_truncated_error_message(
    make_queue: MakeQueue, capture_server: CaptureServer, caplog: pytest.LogCaptureFixture
) -> None:
    capture_server.fail_with(401, body="x" * 285 + f" token={KEY} " + "y" * 100)
    queue = make_queue()
    with caplog.at_level(logging.DEBUG, logger="analytics_queue"):
        queue.track("e", distinct_id="u")
        assert queue.flush(timeout=10)
    text = json.dumps(queue.metrics().to_dict()) + caplog.text
    assert queue.metrics().last_error is not None
    assert KEY[:8] not in text


def test_the_queue_is_bounded_in_bytes_as_well_as_in_events(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    # A few big events fill the byte bound long before the count bound: the rest are refused
    # as queue_full at track(), and what was accepted is delivered.
    queue = make_queue(max_queue_bytes=2_000_000, max_queue_size=10_000, batch_size=1000)
    big = {"blob": "x" * 400_000}
    accepted = [queue.track("big", distinct_id="u", properties=big) for _ in range(20)]
    assert 3 <= accepted.count(True) <= 5
    assert accepted[: accepted.count(True)] == [True] * accepted.count(True)
    assert queue.metrics().refused_by_reason == {"queue_full": 20 - accepted.count(True)}
    assert queue.flush(timeout=10)
    assert len(capture_server.events("big")) == accepted.count(True)


def test_without_a_byte_bound_only_the_count_bounds_the_queue(make_queue: MakeQueue) -> None:
    queue = make_queue(max_queue_bytes=None, max_queue_size=3, flush_interval=3600, batch_size=100)
    big = {"blob": "x" * 400_000}
    assert [queue.track("big", distinct_id="u", properties=big) for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]
