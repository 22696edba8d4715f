"""`CaptureServer`: a local HTTP server that answers like PostHog's capture service.

It listens on 127.0.0.1 (port 0 by default), serves each connection on its own daemon thread
with HTTP/1.1 keep-alive, decodes and validates every request with `_protocol.decode_request`,
records what it received, and can be scripted to misbehave (`_faults`).

Thread safety: every public method of `CaptureServer` may be called from any thread, including
while handler threads are recording. Recorded state sits behind one `threading.Condition`;
`wait_for` and `wait_for_requests` block on it, so tests never poll. The recorded
`CapturedEvent` and `CapturedRequest` objects are immutable.
"""

from __future__ import annotations

import logging
import random
import selectors
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final

from ._faults import (
    AnswerFault,
    DelayFault,
    FaultScript,
    check_times,
    default_fault_body,
    format_retry_after,
)
from ._protocol import READINESS_ROUTE, Decoded, ValidEvent, decode_request, route_limit
from ._records import CapturedEvent, CapturedRequest, Headers

__all__ = ["CaptureServer"]

logger = logging.getLogger(__name__)

#: How long `stop()` and `down()` wait for connection threads to finish.
DEFAULT_JOIN_TIMEOUT: Final = 5.0
#: A body over the route limit is read and discarded (to keep the connection usable) up to this
#: size; a larger one gets its 413 and the connection is closed without reading it.
MAX_DRAIN: Final = 64 * 1024 * 1024
#: Bodies sent to unknown paths or with a wrong method are drained up to this size.
OTHER_ROUTE_LIMIT: Final = 1024 * 1024
_CHUNK: Final = 64 * 1024
_OK_BODY: Final = b'{"status":"Ok"}'
_TEXT: Final = "text/plain; charset=utf-8"
_JSON: Final = "application/json"


class _BadFraming(Exception):
    """The request body cannot be delimited: answer 400 and close the connection."""


class _ClientGone(Exception):
    """The client closed the connection before sending the whole body."""


class CaptureServer:
    """A faithful local PostHog capture server, for tests, demos and benchmarks.

    Routes: ``POST``/``GET`` on ``/batch`` and ``/batch/`` (20 MiB body limit) and on ``/e``,
    ``/i/v0/e``, ``/capture``, ``/track`` with or without a trailing slash (2 MiB); ``GET
    /_readiness`` answers 200; any other path 404. Validation and statuses follow PostHog's Rust
    capture service (see `analytics_queue.testing`): a request with any invalid event ingests
    nothing.

    Example:
        >>> with CaptureServer() as server:  # doctest: +SKIP
        ...     client = posthog.Posthog("phc_test", host=server.url)
        ...     client.capture("signup", distinct_id="u1")
        ...     client.flush()
        ...     [event] = server.wait_for(1)
        ...     assert event.event == "signup"

    Faults apply to requests to capture routes. Answer faults (`fail_with`, `hang`,
    `reset_connections`, `accept_then_fail`) queue up in the order they were set: each serves its
    ``times`` requests, then the next takes over; ``times=None`` lasts until `clear_faults`.
    `delay_responses` queues independently and combines with them.

    Thread safety: safe to share between threads; all methods may be called concurrently with
    the handler threads.

    Args:
        host: The address to listen on.
        port: The port; 0 picks a free one (read it back from `port` or `url`).
        api_keys: If given, requests whose token is not in it get 401. Real PostHog answers 200
            to a well-formed unknown key and drops the events silently: this option is a test
            convenience, not PostHog behaviour.
        delay: Seconds to hold back every answer (on top of `delay_responses`).
        fail_rate: Probability in [0, 1] of answering a request with 503 (nothing ingested),
            when no answer fault applies.
        on_batch: Called with each `CapturedRequest` (capture routes and unknown paths, not
            readiness probes) on the handler thread, after it is recorded and before the client
            gets its answer. Exceptions are logged and ignored.
        record: If false, nothing is kept (`events()`, `requests`, `uuids()` stay empty and
            `wait_for` raises); for long runs such as the command line, which counts through
            `on_batch`.

    Raises:
        ValueError: For an out-of-range argument.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_keys: Iterable[str] | None = None,
        delay: float = 0.0,
        fail_rate: float = 0.0,
        on_batch: Callable[[CapturedRequest], object] | None = None,
        record: bool = True,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, got {port!r}")
        if not delay >= 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay!r}")
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be in [0, 1], got {fail_rate!r}")
        if on_batch is not None and not callable(on_batch):
            raise ValueError("on_batch must be callable or None")
        if isinstance(api_keys, str):
            raise ValueError("api_keys must be a collection of keys, not one string")
        self._host = host
        self._requested_port = port
        self._api_keys = frozenset(api_keys) if api_keys is not None else None
        self._delay = float(delay)
        self._fail_rate = float(fail_rate)
        self._on_batch = on_batch
        self._record = record
        self._random = random.Random()

        self._cond = threading.Condition()
        self._events: list[CapturedEvent] = []
        self._requests: list[CapturedRequest] = []
        self._uuid_counts: dict[str, int] = {}
        self._faults = FaultScript()
        self._release = threading.Event()  # set to free hung and delayed handlers

        self._lifecycle = threading.Lock()
        self._listener: _Listener | None = None
        self._started = False
        self._port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and start serving on a background thread.

        Raises:
            RuntimeError: If already started.
            OSError: If the address cannot be bound.
        """
        with self._lifecycle:
            if self._started:
                raise RuntimeError("capture server already started")
            self._listener = _Listener(self, self._host, self._requested_port)
            self._port = self._listener.port
            self._started = True
            logger.debug("capture server listening on %s", self.url)

    def stop(self, timeout: float = DEFAULT_JOIN_TIMEOUT) -> None:
        """Stop serving: close the listener and every connection, release hung and delayed
        handlers, and wait up to `timeout` seconds for their threads. Idempotent.

        Recorded events, requests and faults are kept; `start` may be called again (it binds the
        port given to the constructor anew).
        """
        with self._lifecycle:
            if not self._started:
                return
            self._started = False
            listener, self._listener = self._listener, None
            if listener is not None:
                listener.server.closing = True  # before the release: see _Handler._dispatch
            self._release_waiters()
        if listener is not None:
            listener.close(timeout)
        logger.debug("capture server stopped")

    def down(self, timeout: float = DEFAULT_JOIN_TIMEOUT) -> None:
        """Stop listening, as if the server died: new connections are refused and open ones
        are closed. Recorded state and faults are kept. `up` brings it back on the same port.

        Raises:
            RuntimeError: If the server was not started.
        """
        with self._lifecycle:
            if not self._started:
                raise RuntimeError("capture server not started")
            listener, self._listener = self._listener, None
            if listener is None:
                return
            listener.server.closing = True  # before the release: see _Handler._dispatch
            self._release_waiters()
        listener.close(timeout)
        logger.debug("capture server down (port %s refuses connections)", self._port)

    def up(self) -> None:
        """Listen again on the port it had before `down`.

        Raises:
            RuntimeError: If the server was not started.
            OSError: If that port was taken in the meantime.
        """
        with self._lifecycle:
            if not self._started:
                raise RuntimeError("capture server not started")
            if self._listener is not None:
                return
            assert self._port is not None
            self._listener = _Listener(self, self._host, self._port)
        logger.debug("capture server up again on %s", self.url)

    def __enter__(self) -> CaptureServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the constructor's port until `start` when that was not 0).

        Raises:
            RuntimeError: If the port was 0 and the server never started.
        """
        if self._port is not None:
            return self._port
        if self._requested_port:
            return self._requested_port
        raise RuntimeError("capture server not started: port 0 is chosen by start()")

    @property
    def url(self) -> str:
        """The base URL to give a client as its host, e.g. ``"http://127.0.0.1:54321"``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def __repr__(self) -> str:
        where = self.url if self._port is not None or self._requested_port else "unbound"
        state = "down" if self._started and self._listener is None else None
        state = state or ("running" if self._started else "stopped")
        return f"CaptureServer({where}, {state})"

    # -- what was received -----------------------------------------------------------------

    def events(self, event: str | None = None) -> list[CapturedEvent]:
        """Accepted events in arrival order, optionally only those named `event`."""
        with self._cond:
            if event is None:
                return list(self._events)
            return [e for e in self._events if e.event == event]

    @property
    def requests(self) -> list[CapturedRequest]:
        """Every request received since the last `clear`, whatever its status, in order."""
        with self._cond:
            return list(self._requests)

    def uuids(self) -> list[str]:
        """The ``uuid`` of each accepted event in order (events sent without one are skipped)."""
        with self._cond:
            return [e.uuid for e in self._events if e.uuid is not None]

    def duplicates(self) -> list[str]:
        """UUIDs accepted more than once (compared case-insensitively), in first-seen order."""
        with self._cond:
            return [uuid for uuid, count in self._uuid_counts.items() if count > 1]

    def clear(self) -> None:
        """Forget recorded events and requests. Faults stay; see `clear_faults`."""
        with self._cond:
            self._events.clear()
            self._requests.clear()
            self._uuid_counts.clear()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[CapturedEvent]:
        """Block until at least `count` events were accepted, then return all of them.

        Raises:
            TimeoutError: If fewer arrived within `timeout` seconds.
            RuntimeError: If the server was built with ``record=False``.
        """
        self._check_recording()
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._events) >= count, timeout):
                raise TimeoutError(
                    f"capture server: only {len(self._events)} of {count} events arrived "
                    f"within {timeout} s"
                )
            return list(self._events)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[CapturedRequest]:
        """Block until at least `count` requests (of any status) arrived; return all of them.

        A request held by `hang` counts as soon as it was read.

        Raises:
            TimeoutError: If fewer arrived within `timeout` seconds.
            RuntimeError: If the server was built with ``record=False``.
        """
        self._check_recording()
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(
                    f"capture server: only {len(self._requests)} of {count} requests arrived "
                    f"within {timeout} s"
                )
            return list(self._requests)

    def _check_recording(self) -> None:
        if not self._record:
            raise RuntimeError("capture server built with record=False keeps nothing to wait for")

    # -- faults ----------------------------------------------------------------------------

    def fail_with(
        self,
        status: int,
        *,
        times: int | None = None,
        retry_after: float | str | None = None,
        body: str | None = None,
    ) -> None:
        """Answer `status` instead of the normal answer, ingesting nothing.

        Args:
            status: 200..599, e.g. 500, 503, 408, 413, 400 or 429. A 2xx answers like a
                success but drops the events (what PostHog does for unknown keys and quotas).
            times: How many requests get it; ``None`` until `clear_faults`.
            retry_after: Sets ``Retry-After``: seconds (int or float) or an HTTP-date string.
            body: The response body; defaults to PostHog's text for that status.
        """
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError(f"status must be an int in 200..599, got {status!r}")
        check_times(times)
        header = format_retry_after(retry_after) if retry_after is not None else None
        self._add_answer(
            AnswerFault("status", status=status, body=body, retry_after=header, remaining=times)
        )

    def delay_responses(self, seconds: float, *, times: int | None = None) -> None:
        """Hold each answer back by `seconds`; ended early by `clear_faults` (which then
        answers) or by `stop`/`down` (which close the connection unanswered).

        The request is recorded, and its events accepted, before the wait, like a server that
        ingests and then answers slowly: `wait_for_requests` returns while the client waits.
        """
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        check_times(times)
        with self._cond:
            self._faults.add_delay(DelayFault(float(seconds), remaining=times))

    def hang(self, *, times: int | None = None) -> None:
        """Read the request and never answer, until `clear_faults`, `down` or `stop` (which
        then close the connection without an answer). The request is recorded with status
        ``None``."""
        check_times(times)
        self._add_answer(AnswerFault("hang", remaining=times))

    def reset_connections(self, *, times: int | None = None) -> None:
        """Read the request, then reset the connection (TCP RST, ``SO_LINGER`` 0).
        The request is recorded with status ``None``."""
        check_times(times)
        self._add_answer(AnswerFault("reset", remaining=times))

    def accept_then_fail(self, k: int, status: int = 500, *, times: int | None = None) -> None:
        """Ingest the first `k` events of a valid request, then answer `status` (like PostHog
        when a batch fails part-way). An invalid request still gets its validation error."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be an int >= 0, got {k!r}")
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError(f"status must be an int in 200..599, got {status!r}")
        check_times(times)
        self._add_answer(AnswerFault("partial", status=status, accept=k, remaining=times))

    def clear_faults(self) -> None:
        """Remove every scripted fault and release hung and delayed handlers.

        The constructor's `delay` and `fail_rate` stay.
        """
        with self._cond:
            self._faults.clear()
        with self._lifecycle:
            self._release_waiters()

    def _add_answer(self, fault: AnswerFault) -> None:
        with self._cond:
            self._faults.add_answer(fault)

    def _release_waiters(self) -> None:
        # Callers hold self._lifecycle. Handlers hold on to the event they took with their
        # faults, so setting it frees exactly the handlers waiting now.
        released, self._release = self._release, threading.Event()
        released.set()

    # -- used by the handler threads -------------------------------------------------------

    def _take_faults(self) -> tuple[AnswerFault | None, float, threading.Event]:
        with self._cond:
            answer, delay = self._faults.take()
            release = self._release
        if answer is None and self._fail_rate and self._random.random() < self._fail_rate:
            answer = AnswerFault("status", status=503)
        return answer, delay + self._delay, release

    def _record_request(self, request: CapturedRequest, events: Sequence[ValidEvent]) -> None:
        captured = [
            CapturedEvent(
                e.event, e.distinct_id, e.properties, e.uuid, e.timestamp, e.data, request
            )
            for e in events
        ]
        if self._record:
            with self._cond:
                self._requests.append(request)
                if captured:
                    self._events.extend(captured)
                    counts = self._uuid_counts
                    for event in captured:
                        if event.uuid is not None:
                            key = event.uuid.lower()
                            counts[key] = counts.get(key, 0) + 1
                self._cond.notify_all()
        if self._on_batch is not None and request.path != READINESS_ROUTE:
            try:
                self._on_batch(request)
            except Exception:
                logger.exception("capture server: on_batch callback failed")


class _HTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that tracks its connections so that `close` can end them."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, capture: CaptureServer, host: str, port: int) -> None:
        self.capture = capture
        self.closing = False
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._connections_lock = threading.Lock()
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can take
        # seconds on a badly configured machine; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name="analytics-queue-capture-conn",
            daemon=True,
        )
        with self._connections_lock:
            if self.closing:
                self.shutdown_request(request)
                return
            self._connections[request] = thread
        thread.start()

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.pop(request, None)
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that vanish mid-request are normal here; never print tracebacks to stderr.
        logger.debug("capture server: error on connection from %s", client_address, exc_info=True)

    def close_connections(self) -> list[threading.Thread]:
        """Shut down every open connection; return their threads."""
        with self._connections_lock:
            self.closing = True
            connections = list(self._connections.items())
        for conn, _ in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return [thread for _, thread in connections]


class _Listener:
    """One bound listening socket, its accept thread and its connections."""

    def __init__(self, capture: CaptureServer, host: str, port: int) -> None:
        self.server = _HTTPServer(capture, host, port)
        self.port: int = self.server.server_port
        self.server.socket.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(
            target=self._accept_loop, name="analytics-queue-capture-server", daemon=True
        )
        self._thread.start()

    def _accept_loop(self) -> None:
        server = self.server
        with selectors.DefaultSelector() as selector:
            selector.register(server.socket, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not server.closing:
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        conn, address = server.socket.accept()
                    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                        continue
                    except OSError:
                        if server.closing:
                            return
                        logger.exception("capture server: accept failed")
                        continue
                    conn.setblocking(True)
                    server.process_request(conn, address)

    def close(self, timeout: float) -> None:
        server = self.server
        server.closing = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not threading.current_thread():
            self._thread.join()
        server.server_close()  # connection attempts are refused from now on
        self._wake_r.close()
        self._wake_w.close()
        deadline = time.monotonic() + timeout
        for thread in server.close_connections():
            if thread is threading.current_thread():
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.warning("capture server: a connection thread did not end in %s s", timeout)


class _Handler(BaseHTTPRequestHandler):
    """Serves the requests of one connection (keep-alive) for `CaptureServer`."""

    protocol_version = "HTTP/1.1"
    server_version = "analytics-queue-capture"
    sys_version = ""
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not a TCP socket
            pass

    def log_message(self, format: str, *args: Any) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("capture server: %s - %s", self.address_string(), format % args)

    def do_POST(self) -> None:
        try:
            self._dispatch()
        except _ClientGone:
            self.close_connection = True
        except _BadFraming as exc:
            self.close_connection = True
            self._respond(400, str(exc).encode(), _TEXT)

    do_GET = do_POST
    do_PUT = do_POST
    do_PATCH = do_POST
    do_DELETE = do_POST
    do_OPTIONS = do_POST
    do_HEAD = do_POST

    # -- dispatch --------------------------------------------------------------------------

    def _dispatch(self) -> None:
        capture = self.server.capture
        path, _, query = self.path.partition("?")
        method = self.command
        limit = route_limit(path)
        extra: tuple[tuple[str, str], ...] = ()
        text: str | None

        if limit is None or method not in ("GET", "POST"):
            body, wire_size, _ = self._read_body(OTHER_ROUTE_LIMIT)
            if path == READINESS_ROUTE and method == "GET":
                status, text = 200, "ready"
            elif limit is None and path != READINESS_ROUTE:
                status, text = 404, f"not found: {path}"
            else:
                status, text = 405, "method not allowed"
                extra = (("Allow", "GET" if path == READINESS_ROUTE else "GET, POST"),)
            error = text if status >= 400 else None
            capture._record_request(self._captured(path, query, status, wire_size, error), ())
            self._respond(status, text.encode(), _TEXT, extra)
            return

        body, wire_size, too_large = self._read_body(limit)
        headers = self._headers()
        answer, delay, release = capture._take_faults()
        if too_large:
            decoded = Decoded(
                413, f"maximum event size exceeded: request body over this route's {limit} bytes"
            )
        else:
            decoded = decode_request(query, headers, body, limit=limit, api_keys=capture._api_keys)

        if answer is not None and answer.kind in ("hang", "reset"):
            request = self._captured(path, query, None, wire_size, None, decoded, headers=headers)
            capture._record_request(request, ())
            self.close_connection = True
            if answer.kind == "reset":
                self._reset()
            elif not self.server.closing:
                # stop() and down() set `closing` before they set (and replace) the release
                # event, so either `release` is the event they set, or `closing` is seen here.
                release.wait()
            return

        if answer is None or (answer.kind == "partial" and decoded.status != 200):
            status = decoded.status
            accepted = decoded.events if status == 200 else ()
            text = decoded.error
        elif answer.kind == "partial":
            status = answer.status
            accepted = decoded.events[: answer.accept]
            text = default_fault_body(status)
        else:
            status = answer.status
            accepted = ()
            text = answer.body if answer.body is not None else default_fault_body(status)
            if answer.retry_after is not None:
                extra = (("Retry-After", answer.retry_after),)

        error = text if status >= 400 else None
        request = self._captured(
            path, query, status, wire_size, error, decoded, len(accepted), headers=headers
        )
        # Recorded before the (possibly delayed) answer, as a server that ingests then answers
        # slowly: a test can wait_for_requests() while the client still waits for its answer.
        capture._record_request(request, accepted)
        if delay > 0:
            if not self.server.closing:
                release.wait(delay)
            if self.server.closing:  # stopped or down while we waited: no answer
                self.close_connection = True
                return
        if text is None:
            self._respond(status, _OK_BODY, _JSON, extra)
        else:
            content_type = _JSON if 200 <= status < 300 and answer is not None else _TEXT
            self._respond(status, text.encode("utf-8"), content_type, extra)

    def _headers(self) -> Headers:
        return Headers(self.headers.items())

    def _captured(
        self,
        path: str,
        query: str,
        status: int | None,
        wire_size: int,
        error: str | None,
        decoded: Decoded | None = None,
        accepted: int = 0,
        *,
        headers: Headers | None = None,
    ) -> CapturedRequest:
        if decoded is None:
            decoded = Decoded(status or 0, error)
        return CapturedRequest(
            method=self.command,
            path=path,
            query=query,
            headers=headers if headers is not None else self._headers(),
            status=status,
            api_key=decoded.token,
            body_size=wire_size,
            decompressed_size=decoded.decompressed_size,
            gzipped=decoded.gzipped,
            sent_at=decoded.sent_at,
            received_at=time.time(),
            event_count=len(decoded.raw_events),
            accepted=accepted,
            body=decoded.body,
            error=error,
            _raw_events=decoded.raw_events,
        )

    # -- reading ---------------------------------------------------------------------------

    def _read_body(self, limit: int) -> tuple[bytes, int, bool]:
        """Read the body; return it, its size on the wire, and whether it was over `limit`
        (then it is discarded, and the connection closed when it is too big to drain)."""
        encoding = (self.headers.get("Transfer-Encoding") or "").strip().lower()
        if encoding:
            if encoding != "chunked":
                raise _BadFraming(f"unsupported Transfer-Encoding: {encoding}")
            return self._read_chunked(limit)
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b"", 0, False
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError(length)
        except ValueError:
            raise _BadFraming(f"invalid Content-Length: {length_header!r}") from None
        if length > limit:
            if length > MAX_DRAIN:
                self.close_connection = True
            else:
                self._discard(length)
            return b"", length, True
        body = self.rfile.read(length)
        if len(body) < length:
            raise _ClientGone
        return body, length, False

    def _discard(self, length: int) -> None:
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(_CHUNK, remaining))
            if not chunk:
                raise _ClientGone
            remaining -= len(chunk)

    def _read_chunked(self, limit: int) -> tuple[bytes, int, bool]:
        parts: list[bytes] = []
        size = 0
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise _ClientGone
            try:
                chunk_size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadFraming("invalid chunk size") from None
            if chunk_size == 0:
                break
            size += chunk_size
            if size > MAX_DRAIN:
                self.close_connection = True
                return b"", size, True
            data = self.rfile.read(chunk_size)
            if len(data) < chunk_size or not self.rfile.readline(1024):
                raise _ClientGone
            if size <= limit:
                parts.append(data)
        while True:  # trailers, up to the empty line
            line = self.rfile.readline(8192)
            if not line:
                raise _ClientGone
            if line in (b"\r\n", b"\n"):
                break
        if size > limit:
            return b"", size, True
        return b"".join(parts), size, False

    # -- answering -------------------------------------------------------------------------

    def _respond(
        self,
        status: int,
        body: bytes,
        content_type: str,
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        lines = [
            f"HTTP/1.1 {status} {phrase}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            f"Date: {self.date_time_string()}",
        ]
        lines.extend(f"{name}: {value}" for name, value in extra_headers)
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head if self.command == "HEAD" else head + body)
        self.log_request(status, len(body))

    def _reset(self) -> None:
        """Close the connection with a TCP RST instead of a FIN."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:  # pragma: no cover - already gone
            pass
