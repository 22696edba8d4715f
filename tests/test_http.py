"""A request in two halves (write now, read the answer later), and the body prepared ahead."""

from __future__ import annotations

import datetime as dt
import time

import urllib3

from analytics_queue import _http
from analytics_queue.testing import CaptureServer
from analytics_queue.transport import PostHogTransport

KEY = "phc_http_test"


def test_a_body_prepared_ahead_carries_the_sent_at_of_its_request(
    capture_server: CaptureServer,
) -> None:
    transport = PostHogTransport(KEY, capture_server.url, gzip=True)
    try:
        prepared = transport.prepare([b'{"event":"a","distinct_id":"u","properties":{}}'])
        before = time.time()
        result = transport.finish(transport.begin(prepared, timeout=10))
    finally:
        transport.close()
    assert result.ok
    (request,) = capture_server.wait_for_requests(1, timeout=10)
    assert request.gzipped and isinstance(request.body, dict)
    sent_at = dt.datetime.fromisoformat(request.body["sent_at"]).timestamp()
    assert sent_at >= before  # stamped when the request was written, not when prepared
    assert [e.event for e in capture_server.events()] == ["a"]


def test_requests_written_then_answered_one_after_another(capture_server: CaptureServer) -> None:
    manager = urllib3.PoolManager(maxsize=1)
    url = capture_server.url + "/batch/"
    body = b'{"api_key":"k","batch":[{"event":"e","distinct_id":"u","properties":{}}]}'
    headers = {"Content-Type": "application/json"}
    for _ in range(3):
        exchange = _http.start(manager, url, body, headers, timeout=10)
        assert exchange is not None
        response, _ = exchange.finish(timeout=10, limit=1024)
        assert response.status == 200
    assert len(capture_server.events("e")) == 3
    manager.clear()


def test_a_proxy_pool_is_not_split() -> None:
    proxy = urllib3.ProxyManager("http://127.0.0.1:9")
    assert _http.start(proxy, "http://example.invalid/batch/", b"{}", {}, timeout=1) is None
