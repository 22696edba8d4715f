"""The wire: our request body against posthog-python's own for the same event, key by key."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import uuid
from typing import Any

import posthog
import pytest

from analytics_queue import AnalyticsQueue
from analytics_queue.event import EventEncoder, QueuedEvent
from analytics_queue.testing import CaptureServer
from analytics_queue.transport import LocalTransport, PostHogTransport

KEY = "phc_wire_test"
WHEN = dt.datetime(2026, 11, 29, 2, 44, 48, 474608, tzinfo=dt.timezone.utc)
PROPERTIES = {"topic": "dragons", "length": 1234, "ratio": 0.5, "ok": True, "none": None}


def posthog_body(server: CaptureServer, event_id: str, *, gzip_on: bool) -> dict[str, Any]:
    client = posthog.Posthog(KEY, host=server.url, sync_mode=True, gzip=gzip_on)
    try:
        client.capture(
            "story_generated",
            distinct_id="user-123",
            properties=PROPERTIES,
            timestamp=WHEN,
            uuid=event_id,
        )
    finally:
        client.shutdown()
    (request,) = server.wait_for_requests(1, timeout=10)
    assert request.status == 200
    assert isinstance(request.body, dict)
    return request.body


def our_body(server: CaptureServer, event_id: str, *, gzip_on: bool) -> dict[str, Any]:
    queue = AnalyticsQueue(api_key=KEY, host=server.url, gzip=gzip_on)
    try:
        queue.track(
            "story_generated",
            distinct_id="user-123",
            properties=PROPERTIES,
            timestamp=WHEN,
            uuid=event_id,
        )
        assert queue.flush(timeout=10)
    finally:
        queue.shutdown(timeout=5)
    (request,) = server.wait_for_requests(1, timeout=10)
    assert request.status == 200
    assert isinstance(request.body, dict)
    return request.body


@pytest.mark.parametrize("gzip_on", [True, False])
def test_our_body_matches_posthog_pythons_key_by_key(
    capture_server: CaptureServer, gzip_on: bool
) -> None:
    theirs = posthog_body(capture_server, str(uuid.uuid4()), gzip_on=gzip_on)
    their_request = capture_server.requests[0]
    capture_server.clear()
    ours = our_body(capture_server, str(uuid.uuid4()), gzip_on=gzip_on)
    our_request = capture_server.requests[0]

    assert set(ours) == set(theirs)  # api_key, batch, historical_migration, sent_at
    assert ours["api_key"] == theirs["api_key"] == KEY
    assert ours["historical_migration"] == theirs["historical_migration"]
    for body in (ours, theirs):
        dt.datetime.fromisoformat(body["sent_at"])  # both ISO-8601 with an offset
        assert dt.datetime.fromisoformat(body["sent_at"]).utcoffset() == dt.timedelta(0)
    (our_event,) = ours["batch"]
    (their_event,) = theirs["batch"]
    assert set(our_event) == set(their_event)
    for key in ("event", "distinct_id", "timestamp"):
        assert our_event[key] == their_event[key], key
    assert uuid.UUID(our_event["uuid"]) and uuid.UUID(their_event["uuid"])
    for key, value in PROPERTIES.items():
        assert our_event["properties"][key] == their_event["properties"][key] == value
    assert {"$lib", "$lib_version"} <= set(their_event["properties"]) & set(our_event["properties"])
    assert our_request.headers["Content-Type"] == their_request.headers["Content-Type"]
    assert our_request.gzipped is their_request.gzipped is gzip_on
    assert our_request.path == their_request.path == "/batch/"


def test_posthog_batch_post_round_trips_through_the_capture_server(
    capture_server: CaptureServer,
) -> None:
    from posthog.request import batch_post

    event = {"event": "e", "distinct_id": "u", "properties": {}, "uuid": str(uuid.uuid4())}
    response = batch_post(KEY, host=capture_server.url, batch=[event])
    assert response.status_code == 200
    assert capture_server.uuids() == [event["uuid"]]


def test_the_transport_reports_statuses_and_retry_after_without_raising(
    capture_server: CaptureServer,
) -> None:
    transport = PostHogTransport(KEY, capture_server.url, gzip=True)
    element = EventEncoder().encode(QueuedEvent("e", "u", {}, None, 7, 0.0))
    try:
        assert transport.send([element], timeout=5).ok
        capture_server.fail_with(429, times=1, retry_after=3)
        limited = transport.send([element], timeout=5)
        assert (limited.ok, limited.status, limited.retry_after) == (False, 429, 3.0)
        capture_server.hang(times=1)
        hung = transport.send([element], timeout=0.3)
        assert (hung.ok, hung.status) == (False, None) and "no answer" in (hung.error or "")
        capture_server.clear_faults()
        capture_server.down()
        refused = transport.send([element], timeout=5)
        assert (refused.ok, refused.status) == (False, None)
        assert KEY not in (refused.error or "")
    finally:
        capture_server.up()
        transport.close()


def test_the_body_is_gzipped_json_with_the_elements_in_order() -> None:
    transport = PostHogTransport(KEY, "http://127.0.0.1:9", gzip=True)
    elements = [b'{"event":"a"}', b'{"event":"b"}']
    body = json.loads(transport.body(elements, sent_at=0.0))
    assert body["batch"] == [{"event": "a"}, {"event": "b"}]
    assert body["sent_at"] == "1970-01-01T00:00:00.000000+00:00"
    assert gzip.decompress(gzip.compress(transport.body(elements))).startswith(b'{"api_key"')
    transport.close()
    assert LocalTransport().send(elements, timeout=1).ok
