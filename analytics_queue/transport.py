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
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import urlsplit

import certifi
import urllib3

from analytics_queue._version import __version__
from analytics_queue.event import isoformat
from analytics_queue.retry import parse_retry_after

BATCH_PATH: Final = "/batch/"
USER_AGENT: Final = f"analytics-queue/{__version__}"
#: zlib level for gzip bodies: JSON compresses about 8x at level 1 for a fraction of the CPU
#: that level 9 (posthog-python's) costs; CPU on the worker is CPU taken from request threads.
GZIP_LEVEL: Final = 1
_MAX_MESSAGE: Final = 300

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


def _gzip(data: bytes) -> bytes:
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


class PostHogTransport:
    """Posts batches to PostHog's capture API.

    Args:
        api_key: the project API key; it goes into the body, never into a message.
        host: the base URL, e.g. ``https://us.i.posthog.com``.
        gzip: compress bodies with ``Content-Encoding: gzip``.
        historical_migration: mark every batch as a historical import, as posthog-python's
            option of that name does.
    """

    def __init__(
        self, api_key: str, host: str, *, gzip: bool = True, historical_migration: bool = False
    ) -> None:
        self._api_key = api_key
        self._migration = b"true" if historical_migration else b"false"
        self._url = host.rstrip("/") + BATCH_PATH
        self._gzip = gzip
        self._prefix = b'{"api_key":' + json.dumps(api_key).encode() + b',"batch":['
        self._headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._pool = _new_pool(self._url)

    def body(self, elements: Sequence[bytes], sent_at: float | None = None) -> bytes:
        """The uncompressed request body for ``elements``."""
        stamp = isoformat(time.time() if sent_at is None else sent_at).encode()
        return b"".join(
            (
                self._prefix,
                b",".join(elements),
                b'],"historical_migration":',
                self._migration,
                b',"sent_at":"',
                stamp,
                b'"}',
            )
        )

    def send(self, elements: Sequence[bytes], timeout: float) -> SendResult:
        data = self.body(elements)
        if self._gzip:
            data = _gzip(data)
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
        except urllib3.exceptions.TimeoutError:
            return SendResult(False, error=f"no answer within {timeout:.3g} s")
        except urllib3.exceptions.HTTPError as exc:
            return SendResult(False, error=self._scrub(f"{type(exc).__name__}: {exc}"))
        status = response.status
        if 200 <= status < 300:
            return SendResult(True, status)
        message = self._scrub(response.data.decode("utf-8", "replace")).strip()
        return SendResult(
            False,
            status,
            parse_retry_after(response.headers.get("Retry-After")),
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
