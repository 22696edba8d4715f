"""The real posthog-python SDK against the capture server: delivery and each fault mode.

`posthog.request.batch_post` is internal to posthog-python (see shared/reference/posthog.md):
these tests also guard its signature and behaviour in the pinned version range.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import posthog
import pytest
import requests
from posthog.request import APIError, batch_post

from analytics_queue.testing import CaptureServer

API_KEY = "phc_sdk_test_key"


@pytest.fixture(autouse=True)
def _legacy_capture_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    # posthog-python can opt into its capture-v1 protocol by environment; the server speaks v0.
    monkeypatch.delenv("POSTHOG_CAPTURE_MODE", raising=False)
    monkeypatch.delenv("POSTHOG_CAPTURE_COMPRESSION", raising=False)


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def sdk_events(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "event": "story_generated",
            "distinct_id": f"user-{i}",
            "properties": {"i": i},
            "uuid": str(uuid.uuid4()),
        }
        for i in range(start, start + n)
    ]


def send(
    server: CaptureServer,
    session: requests.Session,
    events: list[dict[str, Any]],
    **kwargs: Any,
) -> requests.Response:
    kwargs.setdefault("timeout", 15)
    return batch_post(API_KEY, host=server.url, session=session, batch=events, **kwargs)


@pytest.mark.parametrize("use_gzip", [False, True], ids=["plain", "gzip"])
def test_posthog_client_delivers_1000_events_exactly_once(
    capture_server: CaptureServer, use_gzip: bool
) -> None:
    client = posthog.Posthog(
        API_KEY,
        host=capture_server.url,
        gzip=use_gzip,
        flush_at=100,
        flush_interval=0.5,
        max_retries=0,
        enable_exception_autocapture=False,
    )
    try:
        sent = []
        for i in range(1000):
            event_uuid = client.capture(
                "story_generated", distinct_id=f"user-{i % 7}", properties={"i": i}
            )
            assert event_uuid is not None
            sent.append(event_uuid)
        client.flush()
        events = capture_server.wait_for(1000, timeout=60)
    finally:
        client.shutdown()
    assert sorted(capture_server.uuids()) == sorted(sent)
    assert capture_server.duplicates() == []
    assert len(events) == 1000
    assert {e.event for e in events} == {"story_generated"}
    assert sorted(e.properties["i"] for e in events) == list(range(1000))
    batches = capture_server.requests
    assert {r.status for r in batches} == {200}
    assert {r.path for r in batches} == {"/batch/"}
    assert all(r.gzipped is use_gzip for r in batches)
    assert all(r.api_key == API_KEY for r in batches)
    assert all(r.sent_at is not None for r in batches)
    assert all(r.headers["User-Agent"].startswith("posthog-python/") for r in batches)
    assert all(e.properties["$lib"] == "posthog-python" for e in events)


@pytest.mark.parametrize("use_gzip", [False, True], ids=["plain", "gzip"])
def test_batch_post_round_trips(
    capture_server: CaptureServer, session: requests.Session, use_gzip: bool
) -> None:
    events = sdk_events(5)
    response = send(capture_server, session, events, gzip=use_gzip, historical_migration=False)
    assert isinstance(response, requests.Response)
    assert response.status_code == 200
    assert response.json() == {"status": "Ok"}
    [request] = capture_server.requests
    assert request.gzipped is use_gzip
    assert request.body["historical_migration"] is False
    if use_gzip:
        assert request.body_size < request.decompressed_size
        assert request.headers["Content-Encoding"] == "gzip"
    assert [e.uuid for e in capture_server.events()] == [e["uuid"] for e in events]
    assert [e.distinct_id for e in capture_server.events()] == [e["distinct_id"] for e in events]


def test_batch_post_raises_api_error_with_the_servers_message(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    bad = sdk_events(2)
    bad[1]["uuid"] = "not-a-uuid"
    with pytest.raises(APIError) as raised:
        send(capture_server, session, bad)
    assert raised.value.status == 400
    assert raised.value.message.startswith("failed to hydrate events from request")
    assert capture_server.events() == []


# -- each fault mode drives the SDK into the matching behaviour ------------------------------


def test_down_gives_a_connection_error_and_up_recovers_on_the_same_port(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    port = capture_server.port
    assert send(capture_server, session, sdk_events(1)).status_code == 200
    capture_server.down()
    with pytest.raises(requests.exceptions.ConnectionError):
        send(capture_server, session, sdk_events(1))
    capture_server.up()
    assert capture_server.port == port
    assert send(capture_server, session, sdk_events(1)).status_code == 200
    assert len(capture_server.events()) == 2


def test_hang_runs_into_the_clients_read_timeout(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    capture_server.hang()
    with pytest.raises(requests.exceptions.ReadTimeout):
        send(capture_server, session, sdk_events(3), timeout=0.5)
    [request] = capture_server.requests
    assert request.status is None and request.event_count == 3
    assert capture_server.events() == []
    capture_server.clear_faults()
    assert send(capture_server, session, sdk_events(1)).status_code == 200


def test_reset_connections_gives_a_connection_error(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    capture_server.reset_connections(times=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        send(capture_server, session, sdk_events(1))
    assert send(capture_server, session, sdk_events(1)).status_code == 200
    assert [r.status for r in capture_server.requests] == [None, 200]


@pytest.mark.parametrize("retry_after", [7, 0.25, 120])
def test_429_carries_the_retry_after_the_test_set(
    capture_server: CaptureServer, session: requests.Session, retry_after: float
) -> None:
    capture_server.fail_with(429, retry_after=retry_after, times=1)
    with pytest.raises(APIError) as raised:
        send(capture_server, session, sdk_events(2))
    assert raised.value.status == 429
    assert raised.value.retry_after == retry_after
    assert raised.value.message == "rate limited"
    assert capture_server.events() == []
    assert send(capture_server, session, sdk_events(2)).status_code == 200  # times=1 expired


def test_retry_after_as_an_http_date(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    capture_server.fail_with(429, retry_after="Wed, 21 Oct 2015 07:28:00 GMT", times=1)
    with pytest.raises(APIError) as raised:
        send(capture_server, session, sdk_events(1))
    assert raised.value.retry_after == 0.0  # a date in the past


@pytest.mark.parametrize("status", [500, 503, 408, 413, 400])
def test_fail_with_status_raises_api_error(
    capture_server: CaptureServer, session: requests.Session, status: int
) -> None:
    capture_server.fail_with(status, times=1)
    with pytest.raises(APIError) as raised:
        send(capture_server, session, sdk_events(2))
    assert raised.value.status == status
    assert raised.value.retry_after is None
    assert capture_server.events() == []


def test_times_n_expires_after_n_requests(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    capture_server.fail_with(503, times=2)
    outcomes: list[int] = []
    for _ in range(4):
        try:
            outcomes.append(send(capture_server, session, sdk_events(1)).status_code)
        except APIError as exc:
            outcomes.append(int(exc.status))
    assert outcomes == [503, 503, 200, 200]


def test_accept_then_fail_ingests_exactly_k(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    events = sdk_events(10)
    capture_server.accept_then_fail(4, times=1)
    with pytest.raises(APIError) as raised:
        send(capture_server, session, events)
    assert raised.value.status == 500
    assert capture_server.uuids() == [e["uuid"] for e in events[:4]]
    assert capture_server.requests[0].accepted == 4


def test_delay_runs_into_the_clients_read_timeout(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    capture_server.delay_responses(600, times=1)
    with pytest.raises(requests.exceptions.ReadTimeout):
        send(capture_server, session, sdk_events(1), timeout=0.5)
    capture_server.clear_faults()


def test_posthog_client_retries_a_503_and_the_uuid_makes_it_safe(
    capture_server: CaptureServer,
) -> None:
    capture_server.fail_with(503, times=1)
    errors: list[Exception] = []
    client = posthog.Posthog(
        API_KEY,
        host=capture_server.url,
        max_retries=1,
        flush_at=10,
        on_error=lambda error, batch: errors.append(error),
        enable_exception_autocapture=False,
    )
    try:
        sent = [client.capture("signup", distinct_id=f"u{i}") for i in range(10)]
        client.flush()
        capture_server.wait_for(10, timeout=30)
    finally:
        client.shutdown()
    first, second = capture_server.requests
    assert (first.status, second.status) == (503, 200)
    assert [e["uuid"] for e in first.raw_events] == [e["uuid"] for e in second.raw_events]
    assert sorted(capture_server.uuids()) == sorted(u for u in sent if u is not None)
    assert capture_server.duplicates() == []
    assert errors == []
