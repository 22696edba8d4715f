"""Senders: deliver one batch of already-serialized events, synchronously, and say how it went.

A sender knows nothing about threads, queues or retries: the worker owns those. It returns a
:class:`SendResult` instead of raising, so a failure is a value the worker can count.

:class:`PostHogTransport` posts to ``{host}/batch/`` in the format posthog-python sends
(``api_key``, ``batch``, ``historical_migration``, ``sent_at``), over a ``requests.Session`` as
posthog-python does. It does not call ``posthog.request.batch_post``: that function serializes
the whole batch with one ``json.dumps`` after walking every value in Python to replace NaN,
which holds the GIL for milliseconds on a large batch (the request-thread stalls measured in
anchors.md), and its session retries https connections by itself, which would break our
deadlines. We serialize each event once, on the worker, and join the bytes here.

:class:`LocalTransport` is the fallback without an API key: each event becomes one JSON line on
the ``analytics_queue.local`` logger.

Not thread-safe: each instance is used by one thread at a time (the worker, or a caller that
holds the worker's send lock).
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import requests
from requests.adapters import HTTPAdapter

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
    """

    def __init__(self, api_key: str, host: str, *, gzip: bool = True) -> None:
        self._api_key = api_key
        self._url = host.rstrip("/") + BATCH_PATH
        self._gzip = gzip
        self._prefix = b'{"api_key":' + json.dumps(api_key).encode() + b',"batch":['
        self._headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._session = self._new_session()

    @staticmethod
    def _new_session() -> requests.Session:
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=2, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def body(self, elements: Sequence[bytes], sent_at: float | None = None) -> bytes:
        """The uncompressed request body for ``elements``."""
        stamp = isoformat(time.time() if sent_at is None else sent_at).encode()
        return b"".join(
            (
                self._prefix,
                b",".join(elements),
                b'],"historical_migration":false,"sent_at":"',
                stamp,
                b'"}',
            )
        )

    def send(self, elements: Sequence[bytes], timeout: float) -> SendResult:
        data = self.body(elements)
        if self._gzip:
            data = _gzip(data)
        try:
            response = self._session.post(
                self._url,
                data=data,
                headers=self._headers,
                timeout=max(timeout, 0.001),
                allow_redirects=False,
            )
        except requests.Timeout:
            return SendResult(False, error=f"no answer within {timeout:.3g} s")
        except requests.RequestException as exc:
            return SendResult(False, error=self._scrub(f"{type(exc).__name__}: {exc}"))
        with response:
            if 200 <= response.status_code < 300:
                return SendResult(True, response.status_code)
            message = self._scrub(response.text).strip()
            return SendResult(
                False,
                response.status_code,
                parse_retry_after(response.headers.get("Retry-After")),
                f"{response.status_code} {message}".strip()[:_MAX_MESSAGE],
            )

    def _scrub(self, message: str) -> str:
        # Replace the whole key before any cut, so that no piece of it survives a truncation.
        return message.replace(self._api_key, "[api key]")[: _MAX_MESSAGE * 4]

    def close(self) -> None:
        self._session.close()

    def reset_after_fork(self) -> None:
        """Give a fork child its own connections; the parent's sockets are left to the parent."""
        self._session = self._new_session()


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
