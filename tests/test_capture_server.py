"""The capture server over real HTTP: PostHog's status table, decoding, records, faults, CLI.

Every request here is real HTTP to a server on 127.0.0.1 (the ``capture_server`` fixture of the
analytics_queue pytest plugin, or one built in the test). Nothing sleeps: tests synchronise on
`wait_for`/`wait_for_requests`, thread joins and `threading.Event`.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from analytics_queue.testing import CapturedEvent, CapturedRequest, CaptureServer
from analytics_queue.testing._protocol import (
    BATCH_BODY_LIMIT,
    EVENT_BODY_LIMIT,
    MAX_EVENT_SIZE,
    decode_request,
)

API_KEY = "phc_test_project_key"
TIMESTAMP = "2026-11-29T02:44:48.474608+00:00"
SENT_AT = "2026-11-29T02:44:48.475741+00:00"
BATCH_PATHS = ["/batch", "/batch/"]
EVENT_PATHS = ["/e", "/e/", "/i/v0/e", "/i/v0/e/", "/capture", "/capture/", "/track", "/track/"]


def make_event(i: int = 0, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "story_generated",
        "distinct_id": f"user-{i}",
        "properties": {"n": i, "$lib": "tests"},
        "timestamp": TIMESTAMP,
        "uuid": str(uuid.uuid4()),
    }
    event.update(fields)
    return event


def make_batch(*events: dict[str, Any], api_key: str | None = API_KEY) -> dict[str, Any]:
    body: dict[str, Any] = {
        "batch": list(events) or [make_event()],
        "historical_migration": False,
        "sent_at": SENT_AT,
    }
    if api_key is not None:
        body["api_key"] = api_key
    return body


def encode(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def post(
    session: requests.Session,
    server: CaptureServer,
    body: Any,
    path: str = "/batch/",
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> requests.Response:
    all_headers = {"Content-Type": "application/json"}
    all_headers.update(headers or {})
    return session.post(
        server.url + path, data=encode(body), headers=all_headers, params=params, timeout=30
    )


def assert_refused(
    response: requests.Response, server: CaptureServer, status: int, message: str
) -> None:
    """`status` with a plain-text body starting with `message`, and nothing ingested."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text.startswith(message), response.text
    assert server.events() == []
    [request] = server.requests
    assert request.status == status
    assert request.accepted == 0
    assert request.error == response.text


# -- PostHog's status table: every row, raw HTTP, nothing recorded as accepted ---------------

BIG = "x" * (MAX_EVENT_SIZE + 1)


def _gz(body: Any) -> bytes:
    return gzip.compress(encode(body))


# (id, path, body, headers, status, message). Where the request can hold a valid event, it
# does, so that a server ingesting the valid part would fail the test.
REFUSALS: list[tuple[str, str, Any, dict[str, str], int, str]] = [
    ("empty payload", "/batch/", b"", {}, 400, "request missing data payload"),
    (
        "bad gzip by header",
        "/batch/",
        encode(make_batch()),
        {"Content-Encoding": "gzip"},
        400,
        "failed to decode request: invalid gzip data",
    ),
    (
        "bad gzip by magic bytes",
        "/batch/",
        b"\x1f\x8b\x08" + encode(make_batch()),
        {},
        400,
        "failed to decode request: invalid gzip data",
    ),
    (
        "truncated gzip",
        "/batch/",
        _gz(make_batch())[:-12],
        {"Content-Encoding": "gzip"},
        400,
        "failed to decode request: invalid gzip data",
    ),
    (
        "not utf-8",
        "/batch/",
        encode(make_batch(make_event())).replace(b"story_generated", b"story_\xff\xfe"),
        {},
        400,
        "failed to decode request: invalid body encoding",
    ),
    (
        "not json",
        "/batch/",
        b'{"api_key": "phc_x", "batch": [',
        {},
        400,
        "failed to parse request: ",
    ),
    (
        "NaN token",
        "/batch/",
        encode(make_batch(make_event())).replace(b'"n": 0', b'"n": NaN'),
        {},
        400,
        "failed to parse request: ",
    ),
    (
        "Infinity token",
        "/batch/",
        encode(make_batch(make_event())).replace(b'"n": 0', b'"n": Infinity'),
        {},
        400,
        "failed to parse request: ",
    ),
    (
        "-Infinity token",
        "/e/",
        encode(make_event(api_key=API_KEY)).replace(b'"n": 0', b'"n": -Infinity'),
        {},
        400,
        "failed to parse request: ",
    ),
    ("json number", "/batch/", b"42", {}, 400, "failed to hydrate events from request: "),
    ("json string", "/e/", b'"hello"', {}, 400, "failed to hydrate events from request: "),
    (
        "batch not a list",
        "/batch/",
        {"api_key": API_KEY, "batch": {"event": "a", "distinct_id": "u"}},
        {},
        400,
        "failed to hydrate events from request: ",
    ),
    (
        "event not an object",
        "/batch/",
        make_batch(make_event(), "story_generated"),  # type: ignore[arg-type]
        {},
        400,
        "failed to hydrate events from request: ",
    ),
    (
        "empty batch",
        "/batch/",
        {"api_key": API_KEY, "batch": []},
        {},
        400,
        "request holds no event",
    ),
    ("empty list", "/e/", b"[]", {}, 400, "request holds no event"),
    (
        "missing event",
        "/batch/",
        make_batch(make_event(), {"distinct_id": "u"}),
        {},
        400,
        "failed to hydrate events from request: ",
    ),
    (
        "event not a string",
        "/batch/",
        make_batch(make_event(), make_event(event=7)),
        {},
        400,
        "failed to hydrate events from request: ",
    ),
    (
        "empty event",
        "/batch/",
        make_batch(make_event(), make_event(event="")),
        {},
        400,
        "event submitted with an empty event name",
    ),
    (
        "missing distinct_id",
        "/batch/",
        make_batch(make_event(), {"event": "a", "properties": {}}),
        {},
        400,
        "event submitted without a distinct_id",
    ),
    (
        "null distinct_id",
        "/batch/",
        make_batch(make_event(), make_event(distinct_id=None)),
        {},
        400,
        "event submitted without a distinct_id",
    ),
    (
        "null distinct_id and null properties.distinct_id",
        "/batch/",
        make_batch(make_event(), make_event(distinct_id=None, properties={"distinct_id": None})),
        {},
        400,
        "event submitted without a distinct_id",
    ),
    (
        "empty distinct_id",
        "/batch/",
        make_batch(make_event(), make_event(distinct_id="")),
        {},
        400,
        "event submitted without a distinct_id",
    ),
    (
        "properties not an object",
        "/batch/",
        make_batch(make_event(), make_event(properties=["a"])),
        {},
        400,
        "failed to hydrate events from request: ",
    ),
    (
        "properties null",
        "/batch/",
        make_batch(make_event(), make_event(properties=None)),
        {},
        400,
        "failed to hydrate events from request: ",
    ),
    (
        "invalid uuid",
        "/batch/",
        make_batch(make_event(), make_event(uuid="not-a-uuid")),
        {},
        400,
        "failed to hydrate events from request: ",
    ),
    (
        "uuid not a string",
        "/batch/",
        make_batch(make_event(), make_event(uuid=12345)),
        {},
        400,
        "failed to hydrate events from request: ",
    ),
    (
        "no token",
        "/batch/",
        make_batch(make_event(), api_key=None),
        {},
        401,
        "event submitted without an api_key",
    ),
    ("empty token", "/batch/", make_batch(api_key=""), {}, 401, "API key is not valid: empty"),
    (
        "token over 64 chars",
        "/batch/",
        make_batch(api_key="phc_" + "a" * 61),
        {},
        401,
        "API key is not valid: too_long",
    ),
    (
        "non-ascii token",
        "/batch/",
        make_batch(api_key="phc_clé"),
        {},
        401,
        "API key is not valid: not_ascii",
    ),
    (
        "token with NUL",
        "/batch/",
        make_batch(api_key="phc_a\u0000b"),
        {},
        401,
        "API key is not valid: null_byte",
    ),
    (
        "personal api key",
        "/batch/",
        make_batch(api_key="phx_personal"),
        {},
        401,
        "API key is not valid: personal_api_key",
    ),
    (
        "single event without token",
        "/e/",
        make_event(),
        {},
        401,
        "event submitted without an api_key",
    ),
    (
        "events with different tokens",
        "/batch/",
        make_batch(make_event(token="phc_a"), make_event(token="phc_b"), api_key=None),
        {},
        401,
        "batch submitted with inconsistent api_key values",
    ),
    (
        "event over 1 MB",
        "/batch/",
        make_batch(make_event(), make_event(properties={"blob": BIG})),
        {},
        413,
        "maximum event size exceeded",
    ),
    (
        "gzipped event over 1 MB",
        "/batch/",
        _gz(make_batch(make_event(), make_event(properties={"blob": BIG}))),
        {"Content-Encoding": "gzip"},
        413,
        "maximum event size exceeded",
    ),
    (
        "body over the 2 MiB limit of /e/",
        "/e/",
        make_event(api_key=API_KEY, properties={"blob": "x" * EVENT_BODY_LIMIT}),
        {},
        413,
        "maximum event size exceeded",
    ),
    (
        "decompressed body over the 2 MiB limit of /capture/",
        "/capture/",
        _gz(make_event(api_key=API_KEY, properties={"blob": "x" * EVENT_BODY_LIMIT})),
        {"Content-Encoding": "gzip"},
        413,
        "maximum event size exceeded",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "message"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_status_table_refusals(
    capture_server: CaptureServer,
    session: requests.Session,
    path: str,
    body: Any,
    headers: dict[str, str],
    status: int,
    message: str,
) -> None:
    response = post(session, capture_server, body, path=path, headers=headers)
    assert_refused(response, capture_server, status, message)


def test_body_over_the_20_mib_limit_of_batch(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    blob_events = [make_event(i, properties={"blob": "y" * 900_000}) for i in range(24)]
    body = encode(make_batch(*blob_events))
    assert len(body) > BATCH_BODY_LIMIT
    response = post(session, capture_server, body)
    assert_refused(response, capture_server, 413, "maximum event size exceeded")
    assert capture_server.requests[0].body_size == len(body)
    # The body was drained, so the keep-alive connection still works.
    assert post(session, capture_server, make_batch()).status_code == 200


def test_body_just_under_the_limits_is_accepted(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    near_limit = make_event(properties={"blob": "z" * (MAX_EVENT_SIZE - 1000)})
    assert post(session, capture_server, make_batch(near_limit)).status_code == 200
    [event] = capture_server.events()
    assert event.uuid == near_limit["uuid"]


@pytest.mark.parametrize("status", [429, 503, 500])
def test_status_table_server_side_rows(
    capture_server: CaptureServer, session: requests.Session, status: int
) -> None:
    # 429 (rate limited), 503 (Kafka failing) and 500 cannot be caused by a request: they are
    # the server's state, scripted here with fail_with.
    capture_server.fail_with(status, times=1, retry_after=3 if status == 429 else None)
    response = post(session, capture_server, make_batch(make_event(), make_event(1)))
    expected = {429: "rate limited", 503: "transient error, please retry"}
    assert_refused(response, capture_server, status, expected.get(status, "internal"))
    assert response.headers.get("Retry-After") == ("3" if status == 429 else None)
    assert capture_server.requests[0].event_count == 2


@pytest.mark.parametrize("capture_server", [{"api_keys": {API_KEY}}], indirect=True)
def test_api_keys_allow_list_refuses_other_keys(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    response = post(session, capture_server, make_batch(api_key="phc_someone_else"))
    assert_refused(response, capture_server, 401, "API key is not valid")
    assert "real PostHog answers 200" in response.text
    assert post(session, capture_server, make_batch()).status_code == 200
    assert len(capture_server.events()) == 1


# -- accepted requests: routes, decoding -----------------------------------------------------


@pytest.mark.parametrize("path", BATCH_PATHS + EVENT_PATHS)
def test_every_capture_route_accepts_a_batch(
    capture_server: CaptureServer, session: requests.Session, path: str
) -> None:
    event = make_event()
    response = post(session, capture_server, make_batch(event), path=path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"status": "Ok"}
    [captured] = capture_server.events()
    assert captured.uuid == event["uuid"]
    assert captured.request.path == path


@pytest.mark.parametrize(
    ("headers", "params", "how"),
    [
        ({"Content-Encoding": "gzip"}, None, "header"),
        ({}, {"compression": "gzip"}, "query gzip"),
        ({}, {"compression": "gzip-js"}, "query gzip-js"),
        ({}, None, "magic bytes"),
    ],
)
def test_gzip_is_recognised(
    capture_server: CaptureServer,
    session: requests.Session,
    headers: dict[str, str],
    params: dict[str, str] | None,
    how: str,
) -> None:
    plain = encode(make_batch(make_event(), make_event(1)))
    compressed = gzip.compress(plain)
    response = post(session, capture_server, compressed, headers=headers, params=params)
    assert response.status_code == 200, (how, response.text)
    [request] = capture_server.requests
    assert request.gzipped
    assert request.body_size == len(compressed)
    assert request.decompressed_size == len(plain)
    assert len(capture_server.events()) == 2


def test_query_compression_gzip_on_plain_json_is_bad_gzip(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    response = post(session, capture_server, make_batch(), params={"compression": "gzip"})
    assert_refused(response, capture_server, 400, "failed to decode request: invalid gzip data")


def test_data_query_value_is_the_payload(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    event = make_event(api_key=API_KEY)
    data = json.dumps(event)
    # GET with ?data= (the old pixel style), then POST whose ?data= wins over an empty body.
    response = session.get(capture_server.url + "/e/?data=" + quote(data), timeout=30)
    assert response.status_code == 200, response.text
    response = session.post(capture_server.url + "/e/", params={"data": data}, timeout=30)
    assert response.status_code == 200, response.text
    b64 = base64.b64encode(data.encode()).decode()
    response = session.get(capture_server.url + "/e/", params={"data": b64}, timeout=30)
    assert response.status_code == 200, response.text
    assert [e.uuid for e in capture_server.events()] == [event["uuid"]] * 3
    assert capture_server.duplicates() == [event["uuid"]]
    # An empty ?data= does not count: the (empty) body is the payload.
    response = session.post(capture_server.url + "/e/?data=", timeout=30)
    assert response.status_code == 400
    assert response.text == "request missing data payload"


def test_form_encoded_body(capture_server: CaptureServer, session: requests.Session) -> None:
    batch = make_batch(make_event())
    response = session.post(
        capture_server.url + "/batch/", data={"data": json.dumps(batch)}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert len(capture_server.events()) == 1
    # JSON sent as a form (curl -d without a Content-Type) is refused, as by PostHog.
    response = session.post(
        capture_server.url + "/batch/",
        data=json.dumps(batch),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert response.status_code == 400
    assert "expected form data" in response.text
    assert len(capture_server.events()) == 1


def test_event_shapes_and_tokens(capture_server: CaptureServer, session: requests.Session) -> None:
    # A single event on /batch/, a list on /e/, tokens per event or in properties.
    single = make_event(api_key=API_KEY)
    assert post(session, capture_server, single, path="/batch/").status_code == 200
    listed = [make_event(1, token=API_KEY), make_event(2, properties={"token": API_KEY})]
    assert post(session, capture_server, listed, path="/e/").status_code == 200
    from_props = make_event(3, properties={"token": "phc_other", "distinct_id": 42})
    del from_props["distinct_id"]
    assert post(session, capture_server, from_props, path="/i/v0/e/").status_code == 200
    events = capture_server.events()
    assert [e.uuid for e in events] == [single["uuid"]] + [e["uuid"] for e in listed] + [
        from_props["uuid"]
    ]
    assert events[-1].distinct_id == "42"
    assert [r.api_key for r in capture_server.requests] == [API_KEY, API_KEY, "phc_other"]


def test_chunked_body(capture_server: CaptureServer) -> None:
    body = encode(make_batch(make_event(), make_event(1)))
    conn = http.client.HTTPConnection("127.0.0.1", capture_server.port, timeout=30)
    try:
        conn.request(
            "POST",
            "/batch/",
            body=iter([body[:50], body[50:]]),
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        response = conn.getresponse()
        assert response.status == 200, response.read()
        response.read()
    finally:
        conn.close()
    assert len(capture_server.events()) == 2
    assert capture_server.requests[0].body_size == len(body)


def test_keep_alive_serves_many_requests_on_one_connection(capture_server: CaptureServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", capture_server.port, timeout=30)
    try:
        for i in range(3):
            conn.request("POST", "/batch/", body=encode(make_batch(make_event(i))))
            response = conn.getresponse()
            assert response.status == 200
            assert response.version == 11
            assert response.getheader("Connection") is None
            response.read()
        first_socket = conn.sock
        conn.request("POST", "/batch/", body=b"{}")
        response = conn.getresponse()
        assert response.status == 400
        response.read()
        assert conn.sock is first_socket  # errors keep the connection too
    finally:
        conn.close()
    assert len(capture_server.events()) == 3


def test_other_routes(capture_server: CaptureServer, session: requests.Session) -> None:
    ready = session.get(capture_server.url + "/_readiness", timeout=30)
    assert (ready.status_code, ready.text) == (200, "ready")
    missing = session.post(capture_server.url + "/v1/batch", data=b"{}", timeout=30)
    assert missing.status_code == 404
    assert missing.headers["Content-Type"].startswith("text/plain")
    wrong_method = session.put(capture_server.url + "/batch/", data=b"{}", timeout=30)
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] == "GET, POST"
    assert [r.status for r in capture_server.requests] == [200, 404, 405]
    assert capture_server.events() == []


# -- what is recorded ------------------------------------------------------------------------


def test_records_of_an_accepted_request(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    events = [make_event(0), make_event(1, event="page_view")]
    body = encode(make_batch(*events))
    before = time.time()
    response = post(session, capture_server, body, headers={"X-Trace": "abc"})
    after = time.time()
    assert response.status_code == 200
    [request] = capture_server.requests
    assert isinstance(request, CapturedRequest)
    assert (request.method, request.path, request.query) == ("POST", "/batch/", "")
    assert request.status == 200 and request.error is None
    assert request.api_key == API_KEY
    assert request.headers["x-trace"] == request.headers["X-TRACE"] == "abc"
    assert "content-type" in request.headers
    assert request.body_size == request.decompressed_size == len(body)
    assert not request.gzipped
    assert request.sent_at == SENT_AT
    assert before <= request.received_at <= after
    assert request.event_count == request.accepted == 2
    assert request.body == json.loads(body)
    assert request.event_names == ["story_generated", "page_view"]

    first, second = capture_server.events()
    assert isinstance(first, CapturedEvent)
    assert (first.event, first.distinct_id, first.uuid) == (
        "story_generated",
        "user-0",
        events[0]["uuid"],
    )
    assert first.properties == {"n": 0, "$lib": "tests"}
    assert first.timestamp == TIMESTAMP
    assert first.data == events[0]
    assert first.request is request and second.request is request
    assert capture_server.events("page_view") == [second]
    assert capture_server.uuids() == [e["uuid"] for e in events]


def test_repr_never_shows_the_api_key(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    secret = "phc_very_secret_key_123"
    event = make_event(properties={"token": secret})
    del event["distinct_id"]
    post(session, capture_server, [event], path="/e/")  # 400: no distinct_id
    post(session, capture_server, make_batch(api_key=secret))
    assert [r.api_key for r in capture_server.requests] == [secret, secret]
    shown = repr(capture_server.requests) + repr(capture_server.events())
    assert secret not in shown
    assert "<redacted>" in shown


def test_duplicates_clear_and_filters(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    a, b = make_event(0), make_event(1)
    no_uuid = make_event(2)
    del no_uuid["uuid"]
    post(session, capture_server, make_batch(a, b, no_uuid))
    post(session, capture_server, make_batch(dict(a, uuid=a["uuid"].upper())))
    assert capture_server.uuids() == [a["uuid"], b["uuid"], a["uuid"].upper()]
    assert capture_server.duplicates() == [a["uuid"]]
    assert [e.uuid for e in capture_server.events()] == [
        a["uuid"],
        b["uuid"],
        None,
        a["uuid"].upper(),
    ]
    capture_server.clear()
    assert capture_server.events() == []
    assert capture_server.requests == []
    assert capture_server.uuids() == capture_server.duplicates() == []


def test_wait_for_blocks_until_events_arrive(capture_server: CaptureServer) -> None:
    started = threading.Event()

    def send() -> None:
        started.wait(10)
        with requests.Session() as s:
            for i in range(3):
                post(s, capture_server, make_batch(make_event(i)))

    sender = threading.Thread(target=send)
    sender.start()
    try:
        started.set()
        events = capture_server.wait_for(3, timeout=30)
        requests_seen = capture_server.wait_for_requests(3, timeout=30)
    finally:
        sender.join(30)
    assert len(events) == 3 and len(requests_seen) == 3


def test_wait_for_times_out_with_a_clear_message(capture_server: CaptureServer) -> None:
    with pytest.raises(TimeoutError, match=r"only 0 of 2 events arrived"):
        capture_server.wait_for(2, timeout=0.05)
    with pytest.raises(TimeoutError, match=r"only 0 of 1 requests arrived"):
        capture_server.wait_for_requests(1, timeout=0.05)


def test_concurrent_clients_lose_and_duplicate_nothing(capture_server: CaptureServer) -> None:
    sent: list[list[str]] = [[] for _ in range(8)]

    def send(n: int) -> None:
        with requests.Session() as s:
            for _ in range(25):
                events = [make_event(i) for i in range(20)]
                sent[n].extend(e["uuid"] for e in events)
                assert post(s, capture_server, make_batch(*events)).status_code == 200

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    capture_server.wait_for(4000, timeout=30)
    assert sorted(capture_server.uuids()) == sorted(u for chunk in sent for u in chunk)
    assert capture_server.duplicates() == []


def test_on_batch_callback_and_its_errors(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[CapturedRequest] = []

    def on_batch(request: CapturedRequest) -> None:
        seen.append(request)
        if request.status != 200:
            raise RuntimeError("callback bug")

    with CaptureServer(on_batch=on_batch) as server, requests.Session() as s:
        assert post(s, server, make_batch()).status_code == 200
        with caplog.at_level(logging.ERROR, logger="analytics_queue.testing"):
            assert post(s, server, b"nope").status_code == 400  # the callback's error is logged
        s.get(server.url + "/_readiness", timeout=30)  # readiness probes are not reported
    assert [r.status for r in seen] == [200, 400]
    assert "on_batch callback failed" in caplog.text


def test_record_false_keeps_nothing() -> None:
    counted: list[int] = []
    with CaptureServer(record=False, on_batch=lambda r: counted.append(r.accepted)) as server:
        with requests.Session() as s:
            assert post(s, server, make_batch(make_event(), make_event(1))).status_code == 200
        assert server.events() == []
        assert server.requests == []
        with pytest.raises(RuntimeError, match="record=False"):
            server.wait_for(1, timeout=0.01)
    assert counted == [2]


# -- lifecycle -------------------------------------------------------------------------------


def test_lifecycle_and_arguments() -> None:
    server = CaptureServer()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.url
    assert CaptureServer(port=8123).url == "http://127.0.0.1:8123"
    server.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            server.start()
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert "running" in repr(server)
    finally:
        server.stop()
    server.stop()  # idempotent
    assert "stopped" in repr(server)
    with pytest.raises(RuntimeError):
        server.down()
    for bad in (
        {"port": -1},
        {"port": 70000},
        {"delay": -1.0},
        {"fail_rate": 1.5},
        {"api_keys": "phc_one_string"},
    ):
        with pytest.raises(ValueError):
            CaptureServer(**bad)
    with pytest.raises(ValueError):
        server.fail_with(99)
    with pytest.raises(ValueError):
        server.hang(times=0)
    with pytest.raises(ValueError):
        server.accept_then_fail(-1)
    with pytest.raises(ValueError):
        server.delay_responses(-1)
    with pytest.raises(ValueError):
        server.fail_with(429, retry_after=-5)


def test_restart_after_stop_and_records_survive(session: requests.Session) -> None:
    with CaptureServer() as server:
        assert post(session, server, make_batch()).status_code == 200
    server.start()
    try:
        assert post(session, server, make_batch()).status_code == 200
    finally:
        server.stop()
    assert len(server.events()) == 2


def test_down_refuses_connections_and_up_reuses_the_port(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    port = capture_server.port
    assert post(session, capture_server, make_batch()).status_code == 200  # pooled connection
    capture_server.down()
    assert "down" in repr(capture_server)
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))
    with pytest.raises(requests.exceptions.ConnectionError):
        post(session, capture_server, make_batch())
    capture_server.up()
    assert capture_server.port == port
    assert post(session, capture_server, make_batch()).status_code == 200
    assert len(capture_server.events()) == 2


# -- faults ----------------------------------------------------------------------------------


def test_answer_faults_queue_in_order_and_expire(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    capture_server.fail_with(503, times=2)
    capture_server.fail_with(429, times=1, retry_after=0.5, body="slow down")
    statuses = [post(session, capture_server, make_batch()) for _ in range(4)]
    assert [r.status_code for r in statuses] == [503, 503, 429, 200]
    assert statuses[2].headers["Retry-After"] == "0.5"
    assert statuses[2].text == "slow down"
    assert len(capture_server.events()) == 1
    # Faults count requests to capture routes only.
    capture_server.fail_with(500, times=1)
    assert session.get(capture_server.url + "/_readiness", timeout=30).status_code == 200
    assert post(session, capture_server, make_batch()).status_code == 500
    assert post(session, capture_server, make_batch()).status_code == 200


def test_fail_with_until_cleared(capture_server: CaptureServer, session: requests.Session) -> None:
    capture_server.fail_with(408)
    assert [post(session, capture_server, make_batch()).status_code for _ in range(3)] == [408] * 3
    capture_server.clear_faults()
    assert post(session, capture_server, make_batch()).status_code == 200


def test_fail_with_2xx_drops_silently(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    capture_server.fail_with(200, times=1)
    response = post(session, capture_server, make_batch())
    assert response.status_code == 200 and response.json() == {"status": "Ok"}
    assert capture_server.events() == []
    assert capture_server.requests[0].accepted == 0


def test_accept_then_fail_ingests_exactly_k(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    events = [make_event(i) for i in range(10)]
    capture_server.accept_then_fail(3, 503, times=1)
    response = post(session, capture_server, make_batch(*events))
    assert response.status_code == 503
    assert capture_server.uuids() == [e["uuid"] for e in events[:3]]
    assert capture_server.requests[0].accepted == 3
    # The retry of the whole batch makes the first three duplicates: what uuids are for.
    assert post(session, capture_server, make_batch(*events)).status_code == 200
    assert capture_server.duplicates() == [e["uuid"] for e in events[:3]]
    # An invalid request still gets its own error and ingests nothing.
    capture_server.accept_then_fail(1)
    assert post(session, capture_server, make_batch(api_key="")).status_code == 401
    assert len(capture_server.events()) == 13


def test_reset_connections_sends_a_tcp_reset(capture_server: CaptureServer) -> None:
    capture_server.reset_connections(times=1)
    body = encode(make_batch())
    with socket.create_connection(("127.0.0.1", capture_server.port), timeout=30) as sock:
        sock.sendall(
            b"POST /batch/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        with pytest.raises(ConnectionResetError):
            sock.recv(1024)
    [request] = capture_server.requests
    assert request.status is None and request.event_count == 1
    assert capture_server.events() == []


def test_hang_holds_the_answer_until_clear_faults(capture_server: CaptureServer) -> None:
    capture_server.hang(times=1)
    outcome: list[BaseException | int] = []

    def send() -> None:
        with requests.Session() as s:
            try:
                outcome.append(post(s, capture_server, make_batch()).status_code)
            except requests.exceptions.RequestException as exc:
                outcome.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    [request] = capture_server.wait_for_requests(1, timeout=30)
    assert request.status is None
    assert sender.is_alive()  # still waiting for an answer
    capture_server.clear_faults()
    sender.join(30)
    assert not sender.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], requests.exceptions.ConnectionError)
    assert capture_server.events() == []


def test_stop_releases_hung_and_delayed_handlers() -> None:
    server = CaptureServer()
    server.start()
    server.hang(times=1)
    server.delay_responses(600)
    results: list[object] = []

    def send() -> None:
        with requests.Session() as s:
            try:
                results.append(post(s, server, make_batch()).status_code)
            except requests.exceptions.RequestException as exc:
                results.append(type(exc))

    senders = [threading.Thread(target=send) for _ in range(2)]
    for t in senders:
        t.start()
    server.wait_for_requests(2, timeout=30)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5
    for t in senders:
        t.join(30)
        assert not t.is_alive()
    assert results == [requests.exceptions.ConnectionError] * 2


def test_delay_responses_holds_the_answer(
    capture_server: CaptureServer, session: requests.Session
) -> None:
    capture_server.delay_responses(0.2, times=1)
    started = time.monotonic()
    assert post(session, capture_server, make_batch()).status_code == 200
    assert time.monotonic() - started >= 0.2
    # A long delay holds one answer (the events are recorded before it) until clear_faults.
    capture_server.delay_responses(600, times=1)
    answered: list[int] = []

    def send() -> None:
        with requests.Session() as s:
            answered.append(post(s, capture_server, make_batch()).status_code)

    held = threading.Thread(target=send)
    held.start()
    capture_server.wait_for(2, timeout=30)
    assert not answered
    # times=1 is used up: the next request is answered while the first is still held (or
    # its client times out after 30 s and the test fails).
    assert post(session, capture_server, make_batch()).status_code == 200
    assert held.is_alive()
    capture_server.clear_faults()
    held.join(30)
    assert answered == [200]


def test_fail_rate_extremes(session: requests.Session) -> None:
    with CaptureServer(fail_rate=1.0) as failing:
        statuses = {post(session, failing, make_batch()).status_code for _ in range(5)}
        assert statuses == {503}
        assert failing.events() == []
    with CaptureServer(fail_rate=0.0) as healthy:
        statuses = {post(session, healthy, make_batch()).status_code for _ in range(5)}
        assert statuses == {200}


def test_constructor_delay_applies_to_every_answer(session: requests.Session) -> None:
    with CaptureServer(delay=0.1) as server:
        for _ in range(2):
            started = time.monotonic()
            assert post(session, server, make_batch()).status_code == 200
            assert time.monotonic() - started >= 0.1


# -- the pure protocol -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "7724780a-220e-43c8-9314-5e9043a3d2d6",
        "7724780A-220E-43C8-9314-5E9043A3D2D6",
        "7724780a220e43c893145e9043a3d2d6",
        "{7724780a-220e-43c8-9314-5e9043a3d2d6}",
        "urn:uuid:7724780a-220e-43c8-9314-5e9043a3d2d6",
    ],
)
def test_uuid_forms_accepted(value: str) -> None:
    decoded = decode_request("", {}, encode(make_batch(make_event(uuid=value))), limit=1 << 20)
    assert decoded.status == 200, decoded.error


@pytest.mark.parametrize(
    "value", ["", "7724780a-220e-43c8-9314", "zz24780a-220e-43c8-9314-5e9043a3d2d6"]
)
def test_uuid_forms_refused(value: str) -> None:
    decoded = decode_request("", {}, encode(make_batch(make_event(uuid=value))), limit=1 << 20)
    assert decoded.status == 400 and decoded.events == ()


def test_distinct_id_is_stored_as_posthog_does() -> None:
    events = [
        make_event(distinct_id="a" * 250),
        make_event(distinct_id="nul\u0000id"),
        make_event(distinct_id={"k": [1, 2]}),
        make_event(distinct_id=None, properties={"distinct_id": "from-props"}),
    ]
    decoded = decode_request("", {}, encode(make_batch(*events)), limit=1 << 20)
    assert [e.distinct_id for e in decoded.events] == [
        "a" * 200,
        "nul\ufffdid",
        '{"k":[1,2]}',
        "from-props",
    ]


# -- the pytest plugin -----------------------------------------------------------------------


def test_plugin_fixture_gives_a_fresh_started_server(capture_server: CaptureServer) -> None:
    assert capture_server.events() == []
    assert capture_server.requests == []
    with requests.Session() as s:
        assert s.get(capture_server.url + "/_readiness", timeout=30).status_code == 200


@pytest.mark.slow
def test_plugin_is_registered_for_other_projects(tmp_path: Path) -> None:
    # A project with no conftest gets the fixture from the pytest11 entry point.
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import json, urllib.request

            def test_it(capture_server):
                body = json.dumps({"api_key": "phc_k", "batch": [
                    {"event": "signup", "distinct_id": "u1"}]}).encode()
                request = urllib.request.Request(capture_server.url + "/batch/", data=body,
                    headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=30) as response:
                    assert response.status == 200
                [event] = capture_server.wait_for(1)
                assert event.event == "signup"
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


# -- the command line ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_command_line_prints_url_and_batches(
    stop_signal: signal.Signals, record_property: Any
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "analytics_queue.testing", "--port", "0", "--print"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("capture server listening on http://127.0.0.1:"), first
        url = first.split()[-1]
        body = json.dumps(
            {
                "api_key": API_KEY,
                "batch": [make_event(0), make_event(1), make_event(2, event="page_view")],
            }
        )
        curl = shutil.which("curl")
        record_property("posted_with", "curl" if curl else "requests (curl not installed)")
        if curl:
            answer = subprocess.run(
                [curl, "-sS", "-H", "Content-Type: application/json", "--data-binary", body,
                 url + "/batch/"],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout  # fmt: skip
        else:
            print("curl not installed: posting with requests instead")
            with requests.Session() as s:
                answer = s.post(url + "/batch/", data=body, timeout=30).text
        assert answer == '{"status":"Ok"}'
        line = process.stdout.readline()
        assert line.startswith("200 POST /batch/ events=3 accepted=3 "), line
        assert "names=story_generated*2,page_view" in line
        process.send_signal(stop_signal)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "capture server stopped: 1 requests, 3 events accepted, 0 duplicate uuids" in out
    assert "Traceback" not in err


@pytest.mark.slow
def test_command_line_reports_a_taken_port() -> None:
    with CaptureServer() as taken:
        result = subprocess.run(
            [sys.executable, "-m", "analytics_queue.testing", "--port", str(taken.port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
