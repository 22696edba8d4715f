"""The transport on hostile networks, over real sockets: proxies, time limits, refusals, redirects.

Every server here is a real one on 127.0.0.1, port 0: an authenticating HTTP proxy that forwards
to the capture server, a server that drips its answer a byte at a time, a port that refuses, a
host that redirects, and a minimal SOCKS5 proxy.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from analytics_queue import AnalyticsQueue
from analytics_queue.event import EventEncoder, QueuedEvent
from analytics_queue.testing import CaptureServer
from analytics_queue.transport import PostHogTransport, SendResult

KEY = "phc_networkTestKey0123456789abcdefghijkl"
ELEMENT = EventEncoder().encode(QueuedEvent("e", "u", {}, None, 7, 0.0))
PROXY_VARIABLES = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
)


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without the machine's proxy settings."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1:0 running in a daemon thread."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


# -- an authenticating proxy ----------------------------------------------------------------


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    """A plain HTTP forward proxy that demands Basic credentials (absolute-form requests)."""

    expected = ""
    seen: list[str | None] = []

    def do_POST(self) -> None:
        auth = self.headers.get("Proxy-Authorization")
        self.seen.append(auth)
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if auth != self.expected:
            self.send_response(407)
            self.send_header("Proxy-Authenticate", 'Basic realm="test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        target = http.client.urlsplit(self.path)  # type: ignore[attr-defined]
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        headers = {
            k: v
            for k, v in self.headers.items()
            if not k.lower().startswith("proxy-") and k.lower() != "connection"
        }
        upstream.request("POST", target.path, body=body, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        upstream.close()
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.getheader("Content-Type") or "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def auth_proxy() -> Iterator[tuple[_Server, list[str | None]]]:
    seen: list[str | None] = []
    token = base64.b64encode(b"user:p@ss w").decode()
    handler = type("Handler", (_ProxyHandler,), {"expected": f"Basic {token}", "seen": seen})
    server = _Server(handler)
    try:
        yield server, seen
    finally:
        server.close()


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_proxy_credentials_in_the_url_are_sent_and_events_arrive(
    capture_server: CaptureServer,
    auth_proxy: tuple[_Server, list[str | None]],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    proxy, seen = auth_proxy
    port = proxy.httpd.server_address[1]
    monkeypatch.setenv(variable, f"http://user:p%40ss%20w@127.0.0.1:{port}")
    queue = AnalyticsQueue(api_key=KEY, host=capture_server.url)
    try:
        assert queue.track("through_proxy", distinct_id="u1")
        assert queue.flush(timeout=10)
    finally:
        queue.shutdown(timeout=5)
    assert [e.event for e in capture_server.wait_for(1)] == ["through_proxy"]
    assert seen and all(s and s.startswith("Basic ") for s in seen)
    assert queue.metrics().failed_by_reason == {}


def test_a_407_names_the_proxy_variable_and_shows_no_credentials(
    capture_server: CaptureServer,
    auth_proxy: tuple[_Server, list[str | None]],
) -> None:
    proxy, _ = auth_proxy
    port = proxy.httpd.server_address[1]
    environ = {"HTTP_PROXY": f"http://user:wrongsecret@127.0.0.1:{port}"}
    transport = PostHogTransport(KEY, capture_server.url, environ=environ)
    try:
        result = transport.send([ELEMENT], timeout=5)
    finally:
        transport.close()
    assert (result.ok, result.status, result.kind) == (False, 407, "proxy")
    assert "HTTP_PROXY" in (result.error or "") and "wrongsecret" not in (result.error or "")


class _Socks5Handler(threading.Thread):
    """A minimal SOCKS5 proxy (no authentication, CONNECT to an IPv4 or a name) for one client."""

    def __init__(self, client: socket.socket, seen: list[tuple[str, int]]) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.seen = seen

    def run(self) -> None:
        c = self.client
        try:
            c.settimeout(10)
            _, count = c.recv(2)
            c.recv(count)
            c.sendall(b"\x05\x00")
            _, _, _, atyp = c.recv(4)
            if atyp == 1:
                host = socket.inet_ntoa(c.recv(4))
            else:
                host = c.recv(c.recv(1)[0]).decode()
            port = int.from_bytes(c.recv(2), "big")
            self.seen.append((host, port))
            with socket.create_connection((host, port), timeout=10) as upstream:
                c.sendall(b"\x05\x00\x00\x01" + bytes(4) + bytes(2))
                pump = threading.Thread(target=_pump, args=(upstream, c), daemon=True)
                pump.start()
                _pump(c, upstream)
                pump.join(timeout=10)
        except OSError:
            pass
        finally:
            c.close()


def _close_listener(listener: socket.socket) -> None:
    """Close a listening socket and wake the thread blocked in its accept()."""
    try:
        listener.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    listener.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


@pytest.fixture
def socks_proxy() -> Iterator[tuple[int, list[tuple[str, int]]]]:
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[tuple[str, int]] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            _Socks5Handler(client, seen).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], seen
    finally:
        stop.set()
        _close_listener(listener)
        thread.join(timeout=5)


def test_a_socks5_proxy_carries_the_events(
    capture_server: CaptureServer,
    socks_proxy: tuple[int, list[tuple[str, int]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("socks", reason="PySocks (the socks extra) is not installed")
    port, seen = socks_proxy
    monkeypatch.setenv("ALL_PROXY", f"socks5h://127.0.0.1:{port}")
    queue = AnalyticsQueue(api_key=KEY, host=capture_server.url)
    try:
        assert queue.track("through_socks", distinct_id="u1")
        assert queue.flush(timeout=10)
    finally:
        queue.shutdown(timeout=5)
    assert [e.event for e in capture_server.wait_for(1)] == ["through_socks"]
    assert seen[0] == ("127.0.0.1", capture_server.port)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("socks5://user:topsecret@127.0.0.1:1080", "PySocks is not installed"),
        ("http://user:topsecret@[::1", "not a valid proxy URL"),
        ("ftp://user:topsecret@proxy:21", "unsupported proxy scheme"),
    ],
)
def test_an_unusable_proxy_keeps_the_app_up_with_one_clear_error(
    capture_server: CaptureServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    value: str,
    expected: str,
) -> None:
    monkeypatch.setitem(sys.modules, "urllib3.contrib.socks", None)  # as without PySocks
    monkeypatch.setenv("HTTP_PROXY", value)
    with caplog.at_level(logging.DEBUG, logger="analytics_queue"):
        queue = AnalyticsQueue(api_key=KEY, host=capture_server.url)  # does not raise
        try:
            assert queue.track("e", distinct_id="u")
            queue.flush(timeout=2)
            health = queue.health()
        finally:
            queue.shutdown(timeout=1)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "HTTP_PROXY" in errors[0].getMessage() and expected in errors[0].getMessage()
    assert "topsecret" not in caplog.text
    assert any("HTTP_PROXY" in reason.message for reason in health.reasons)
    assert capture_server.requests == []


# -- time limits ----------------------------------------------------------------------------


@pytest.fixture
def drip_server() -> Iterator[str]:
    """Reads a request, then answers 200 one byte every 50 ms (about 20 s in all)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 380\r\n\r\n"
    answer += b"x" * 380

    def serve(conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(
                next(
                    line.split(b":")[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
            )
            while len(body) < length:
                body += conn.recv(65536)
            for index in range(len(answer)):
                if stop.wait(0.05):
                    return
                try:
                    conn.sendall(answer[index : index + 1])
                except OSError:
                    return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        _close_listener(listener)
        thread.join(timeout=5)


def test_a_dripping_server_cannot_hold_a_request_past_its_timeout(drip_server: str) -> None:
    transport = PostHogTransport(KEY, drip_server)
    try:
        started = time.monotonic()
        result = transport.send([ELEMENT], timeout=0.5)
        elapsed = time.monotonic() - started
    finally:
        transport.close()
    # The whole answer takes about 20 s to drip; the limit is 0.5 s (margin for a busy machine).
    assert elapsed < 5, f"the request took {elapsed:.1f} s"
    assert (result.ok, result.status, result.kind) == (False, None, "timeout")
    assert "within 0.5 s" in (result.error or "")


# -- what failed, said plainly --------------------------------------------------------------


@pytest.fixture
def refusing_url() -> Iterator[str]:
    """A port bound but not listening: connecting to it is refused, and no one else can take it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_a_refused_connection_is_reported_as_refused_everywhere(
    refusing_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    result = PostHogTransport(KEY, refusing_url).send([ELEMENT], timeout=5)
    assert (result.ok, result.kind) == (False, "refused")
    assert "refused" in (result.error or "") and "no answer" not in (result.error or "")

    with caplog.at_level(logging.WARNING, logger="analytics_queue"):
        queue = AnalyticsQueue(api_key=KEY, host=refusing_url)
        try:
            queue.track("e", distinct_id="u")
            queue.flush(timeout=1)
            health = queue.health()
            metrics = queue.metrics()
        finally:
            queue.shutdown(timeout=0.5)
    assert "refused" in (metrics.last_error or {}).get("message", "")
    assert any("refused" in reason.message for reason in health.reasons)
    assert any("refused" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_an_unresolvable_name_is_reported_as_such() -> None:
    result = PostHogTransport(KEY, "http://analytics-queue-test.invalid").send([ELEMENT], 5)
    assert (result.ok, result.kind) == (False, "dns")
    assert "not resolved" in (result.error or "")


def test_tls_to_a_plain_http_port_is_reported_as_a_tls_failure(
    capture_server: CaptureServer,
) -> None:
    result = PostHogTransport(KEY, f"https://127.0.0.1:{capture_server.port}").send([ELEMENT], 5)
    assert (result.ok, result.kind) == (False, "tls")
    assert "TLS" in (result.error or "")


# -- redirects ------------------------------------------------------------------------------


def _redirecting(location: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(301)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def test_a_redirect_is_not_followed_and_health_says_what_to_set() -> None:
    server = _Server(_redirecting("https://eu.i.posthog.example/batch/?token=abc"))
    try:
        queue = AnalyticsQueue(api_key=KEY, host=server.url)
        try:
            queue.track("e", distinct_id="u")
            queue.flush(timeout=5)
            health = queue.health()
        finally:
            queue.shutdown(timeout=1)
    finally:
        server.close()
    assert queue.metrics().failed_by_reason == {"rejected_301": 1}
    text = " ".join(reason.message for reason in health.reasons)
    assert "POSTHOG_HOST=https://eu.i.posthog.example" in text
    assert "token=abc" not in text


def test_a_redirect_from_http_to_https_names_the_https_host(
    capture_server: CaptureServer,
) -> None:
    server = _Server(_redirecting("https://127.0.0.1/batch/"))
    try:
        result = PostHogTransport(KEY, server.url).send([ELEMENT], timeout=5)
    finally:
        server.close()
    assert (result.status, result.kind) == (301, "redirect")
    assert "set POSTHOG_HOST=https://127.0.0.1" in (result.error or "")


# -- sanitized messages ---------------------------------------------------------------------


def test_upstream_error_text_stays_out_of_health_and_metrics(
    capture_server: CaptureServer, caplog: pytest.LogCaptureFixture
) -> None:
    internal = f"upstream posthog-internal.corp:8000 (10.20.30.40) refused token {KEY[:20]}..."
    capture_server.fail_with(502, body=internal)
    with caplog.at_level(logging.DEBUG, logger="analytics_queue"):
        queue = AnalyticsQueue(api_key=KEY, host=capture_server.url)
        try:
            queue.track("e", distinct_id="u")
            queue.flush(timeout=1)
            shown = str(queue.metrics().to_dict()) + str(queue.health().to_dict())
        finally:
            capture_server.clear_faults()
            queue.shutdown(timeout=5)
    assert "502 Bad Gateway" in shown
    assert "posthog-internal" not in shown and "10.20.30.40" not in shown
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("posthog-internal.corp" in line for line in debug)  # the full text, at DEBUG
    assert KEY[:20] not in caplog.text and KEY[4:12] not in caplog.text


def test_send_result_carries_a_kind() -> None:
    assert SendResult(False, error="x", kind="timeout").kind == "timeout"
    assert SendResult(True, 200).kind is None


@pytest.mark.parametrize(
    "value", ["socks5://user:topsecret@proxy:1080", "http://user:topsecret@[::1", "::::"]
)
def test_a_bad_https_proxy_never_stops_the_constructor(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    monkeypatch.setitem(sys.modules, "urllib3.contrib.socks", None)  # as without PySocks
    monkeypatch.setenv("HTTPS_PROXY", value)
    with caplog.at_level(logging.ERROR, logger="analytics_queue"):
        queue = AnalyticsQueue(api_key=KEY, host="https://us.i.posthog.com")
    queue.shutdown(timeout=0)
    assert "HTTPS_PROXY" in caplog.text and "topsecret" not in caplog.text
