"""Senders: deliver one batch of already-serialized events, synchronously, and say how it went.

A sender knows nothing about threads, queues or retries: the worker owns those. It returns a
:class:`SendResult` instead of raising, so a failure is a value the worker can count.

:class:`PostHogTransport` posts to ``{host}/batch/`` in the format posthog-python sends
(``api_key``, ``batch``, ``historical_migration``, ``sent_at``), over urllib3's connection pool:
the pool under posthog-python's ``requests.Session``, without the session layer on top. It does
not call ``posthog.request.batch_post``: that function serializes the whole batch with one
``json.dumps`` after walking every value in Python to replace NaN, which holds the GIL for
milliseconds on a large batch (the request-thread stalls measured in anchors.md), and its session
retries https connections by itself, which would break our deadlines. We serialize each event
once, on the worker, and join the bytes here. Measured here, a ``requests.Session.post`` costs
460 µs of CPU (the GIL, taken from request threads) against 270 µs for the same request through
urllib3 directly; proxy and CA settings are read from the environment once, not per request.

:class:`LocalTransport` is the fallback without an API key: each event becomes one JSON line on
the ``analytics_queue.local`` logger.

Not thread-safe: each instance is used by one thread at a time (the worker, or a caller that
holds the worker's send lock).
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable
from urllib.parse import urlsplit

import certifi
import urllib3

from analytics_queue import _http
from analytics_queue._version import __version__
from analytics_queue.event import isoformat
from analytics_queue.retry import parse_retry_after

BATCH_PATH: Final = "/batch/"
USER_AGENT: Final = f"analytics-queue/{__version__}"
#: zlib level for gzip bodies: JSON compresses about 8x at level 1 for a fraction of the CPU
#: that level 9 (posthog-python's) costs; CPU on the worker is CPU taken from request threads.
GZIP_LEVEL: Final = 1
_MAX_MESSAGE: Final = 300
#: The least time finish() waits for an answer, however late it is called.
_MIN_READ_TIMEOUT: Final = 0.01

local_logger = logging.getLogger("analytics_queue.local")


@dataclass(frozen=True, slots=True)
class SendResult:
    """How one attempt went.

    Attributes:
        ok: the server acknowledged the batch (2xx).
        status: the HTTP status, or None when no response arrived (network error, timeout).
        retry_after: seconds the server asked us to wait (``Retry-After``), if any.
        error: what went wrong, without secrets; None when ok.
    """

    ok: bool
    status: int | None = None
    retry_after: float | None = None
    error: str | None = None


class Transport(Protocol):
    """Sends one batch; never raises for a delivery failure."""

    def send(self, elements: Sequence[bytes], timeout: float) -> SendResult:
        """Deliver ``elements`` (each the JSON bytes of one event) within ``timeout`` seconds."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class ForkAware(Protocol):
    """Optional for a transport: implemented by one that holds sockets or threads.

    ``reset_after_fork()`` is called in a fork child before its first send, so that the child
    never writes to the parent's connections. Checked with ``isinstance``.
    """

    def reset_after_fork(self) -> None:
        """Drop what belongs to the parent process; open new connections lazily."""
        ...


def _tail(sent_at: float) -> bytes:
    return b'],"historical_migration":false,"sent_at":"' + isoformat(sent_at).encode() + b'"}'


class PreparedBody:
    """A request body without its end: compressed as far as it goes before ``sent_at``.

    Made by ``prepare()`` ahead of time (the costly part); closed once, by ``begin()``.
    """

    __slots__ = ("_compressor", "_head")

    def __init__(self, head: bytes, compressor: zlib._Compress | None) -> None:
        self._head = head
        self._compressor = compressor

    def close(self, tail: bytes) -> bytes:
        """The whole body (compressed when it was prepared so): the head, then ``tail``."""
        if self._compressor is None:
            return self._head + tail
        return self._head + self._compressor.compress(tail) + self._compressor.flush()


@dataclass(slots=True)
class InFlight:
    """A request ``begin()`` wrote: its answer is read by ``finish()``, or it already failed."""

    deadline: float
    exchange: _http.Exchange | None = None
    result: SendResult | None = None
    started: float = field(default_factory=time.monotonic)


@runtime_checkable
class Pipelined(Protocol):
    """Optional for a transport: a send in three steps, so that its caller can work between.

    ``prepare(elements)`` builds the body (no I/O); ``begin(prepared, timeout)`` writes the
    request; ``finish(request)`` reads its answer. ``send`` is the three in a row. None of them
    raises for a delivery failure. Checked with ``isinstance``.
    """

    def prepare(self, elements: Sequence[bytes]) -> PreparedBody: ...

    def begin(self, prepared: PreparedBody, timeout: float) -> InFlight: ...

    def finish(self, request: InFlight) -> SendResult: ...


class PostHogTransport:
    """Posts batches to PostHog's capture API.

    Args:
        api_key: the project API key; it goes into the body, never into a message.
        host: the base URL, e.g. ``https://us.i.posthog.com``.
        gzip: compress bodies with ``Content-Encoding: gzip``.
    """

    def __init__(self, api_key: str, host: str, *, gzip: bool = True) -> None:
        self._api_key = api_key
        self._url = host.rstrip("/") + BATCH_PATH
        self._gzip = gzip
        self._prefix = b'{"api_key":' + json.dumps(api_key).encode() + b',"batch":['
        self._headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._pool = _new_pool(self._url)

    def body(self, elements: Sequence[bytes], sent_at: float | None = None) -> bytes:
        """The uncompressed request body for ``elements``."""
        stamp = time.time() if sent_at is None else sent_at
        return b"".join((self._prefix, b",".join(elements), _tail(stamp)))

    def send(self, elements: Sequence[bytes], timeout: float) -> SendResult:
        return self.finish(self.begin(self.prepare(elements), timeout))

    # -- a request in three steps, so that the worker can work while the server does ---------

    def prepare(self, elements: Sequence[bytes]) -> PreparedBody:
        """Join (and compress) ``elements`` into a body that only lacks its ``sent_at``."""
        head = self._prefix + b",".join(elements)
        if not self._gzip:
            return PreparedBody(head, None)
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        return PreparedBody(compressor.compress(head), compressor)

    def begin(self, prepared: PreparedBody, timeout: float) -> InFlight:
        """Stamp ``sent_at``, finish the body and write the request; never raises.

        ``timeout`` bounds the whole attempt, from now until :meth:`finish` has the answer.
        """
        data = prepared.close(_tail(time.time()))
        seconds = max(timeout, 0.001)
        deadline = time.monotonic() + seconds
        try:
            exchange = _http.start(self._pool, self._url, data, self._headers, seconds)
        except _http.ERRORS as exc:
            return InFlight(deadline, result=self._failure(exc, timeout))
        if exchange is None:  # this pool cannot split a request: send it whole now
            return InFlight(deadline, result=self._post(data, timeout))
        return InFlight(deadline, exchange=exchange)

    def finish(self, request: InFlight) -> SendResult:
        """Wait for the answer to a request :meth:`begin` wrote; never raises."""
        if request.exchange is None:
            assert request.result is not None
            return request.result
        remaining = max(request.deadline - time.monotonic(), _MIN_READ_TIMEOUT)
        try:
            response = request.exchange.finish(remaining)
        except _http.ERRORS as exc:
            return self._failure(exc, request.deadline - request.started)
        return self._answer(response.status, response.headers.get("Retry-After"), response.data)

    def _post(self, data: bytes, timeout: float) -> SendResult:
        seconds = max(timeout, 0.001)
        try:
            response = self._pool.request(
                "POST",
                self._url,
                body=data,
                headers=self._headers,
                timeout=urllib3.Timeout(connect=seconds, read=seconds),
                retries=False,
                redirect=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            return self._failure(exc, timeout)
        return self._answer(response.status, response.headers.get("Retry-After"), response.data)

    def _failure(self, exc: BaseException, timeout: float) -> SendResult:
        if isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError)):
            return SendResult(False, error=f"no answer within {timeout:.3g} s")
        return SendResult(False, error=self._scrub(f"{type(exc).__name__}: {exc}"))

    def _answer(self, status: int, retry_after: str | None, data: bytes) -> SendResult:
        if 200 <= status < 300:
            return SendResult(True, status)
        message = self._scrub(data.decode("utf-8", "replace")).strip()
        return SendResult(
            False,
            status,
            parse_retry_after(retry_after),
            f"{status} {message}".strip()[:_MAX_MESSAGE],
        )

    def _scrub(self, message: str) -> str:
        # Replace the whole key before any cut, so that no piece of it survives a truncation.
        return message.replace(self._api_key, "[api key]")[: _MAX_MESSAGE * 4]

    def close(self) -> None:
        self._pool.clear()

    def reset_after_fork(self) -> None:
        """Give a fork child its own connections; the parent's sockets are left to the parent."""
        self._pool = _new_pool(self._url)


def _new_pool(url: str) -> urllib3.PoolManager:
    """One small pool for ``url``, with the proxy and CA bundle the environment names.

    Read once: ``HTTPS_PROXY``/``HTTP_PROXY`` (``NO_PROXY`` respected), and
    ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` (else certifi's bundle, as requests uses).
    """
    options: dict[str, object] = {
        "num_pools": 1,
        "maxsize": 2,
        "retries": False,
        "ca_certs": os.environ.get("REQUESTS_CA_BUNDLE")
        or os.environ.get("CURL_CA_BUNDLE")
        or certifi.where(),
    }
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return urllib3.ProxyManager(proxy, **options)  # type: ignore[arg-type]
    return urllib3.PoolManager(**options)  # type: ignore[arg-type]


class LocalTransport:
    """Writes each event as one JSON line to the ``analytics_queue.local`` logger at INFO."""

    def send(self, elements: Sequence[bytes], timeout: float) -> SendResult:
        for element in elements:
            local_logger.info("%s", element.decode("utf-8"))
        return SendResult(True, None)

    def close(self) -> None:
        pass

    def reset_after_fork(self) -> None:
        pass
