"""The HTTP sender to PostHog: :class:`PostHogTransport` (the protocol is in :mod:`.sending`).

:class:`PostHogTransport` posts to ``{host}/batch/`` in the format posthog-python sends
(``api_key``, ``batch``, ``historical_migration``, ``sent_at``), over urllib3's connection pool:
the pool under posthog-python's ``requests.Session``, without the session layer on top. It does
not call ``posthog.request.batch_post``: that function serializes the whole batch with one
``json.dumps`` after walking every value in Python to replace NaN, which holds the GIL for
milliseconds on a large batch (request threads stall behind it), and its session
retries https connections by itself, which would break our deadlines. We serialize each event
once, on the worker, and join the bytes here. Measured here, a ``requests.Session.post`` costs
460 µs of CPU (the GIL, taken from request threads) against 270 µs for the same request through
urllib3 directly; proxy and CA settings are read from the environment once, not per request.

Network behaviour (docs/network.md):

- Proxies as requests reads them: ``HTTPS_PROXY``/``HTTP_PROXY``, then ``ALL_PROXY`` (lower-case
  names first), ``NO_PROXY`` respected; ``user:password@`` in the URL is sent as
  ``Proxy-Authorization``; ``socks5://``, ``socks5h://``, ``socks4://`` need PySocks (the
  ``socks`` extra). A proxy value that cannot be used is logged once at ERROR (naming the
  variable, never its credentials) and every send then fails with that reason; nothing raises.
- One attempt never takes longer than its ``timeout`` in total, however slowly the answer drips.
- A failure says what happened (``SendResult.kind``): ``refused``, ``dns``, ``tls``,
  ``timeout``, ``connection``, ``proxy``, ``redirect`` or ``http``. ``SendResult.error`` is a
  short text of our own (status and class, and for a redirect the ``POSTHOG_HOST`` to set),
  safe for the health and metrics endpoints; the server's own text goes to the DEBUG log only.
- Redirects are never followed (the API key is in the body).

A send is three steps (``sending.Pipelined``): ``prepare`` joins and compresses the events into
a body that lacks only its ``sent_at``, ``begin`` stamps it and writes the request, ``finish``
reads the answer. Between ``begin`` and ``finish`` the worker prepares the next batch while the
server works (``_http`` splits urllib3's request in two; behind an HTTP proxy it goes whole).

``SendResult``, ``Transport``, ``ForkAware`` and ``LocalTransport`` are importable from here as
well as from :mod:`analytics_queue.sending`.

Not thread-safe: each instance is used by one thread at a time (the worker, or a caller that
holds the worker's send lock).
"""

from __future__ import annotations

import errno
import http
import http.client
import io
import json
import logging
import os
import socket
import ssl
import threading
import time
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urljoin, urlsplit

import certifi
import urllib3

from analytics_queue import _http
from analytics_queue._redact import redact
from analytics_queue._version import __version__
from analytics_queue.event import isoformat
from analytics_queue.retry import parse_retry_after
from analytics_queue.sending import (  # re-exported: this module was their first home
    ForkAware as ForkAware,
)
from analytics_queue.sending import (
    LocalTransport as LocalTransport,
)
from analytics_queue.sending import (
    Pipelined as Pipelined,
)
from analytics_queue.sending import (
    SendResult,
)
from analytics_queue.sending import (
    Transport as Transport,
)

BATCH_PATH: Final = "/batch/"
USER_AGENT: Final = f"analytics-queue/{__version__}"
#: zlib level for gzip bodies: JSON compresses about 8x at level 1 for a fraction of the CPU
#: that level 9 (posthog-python's) costs; CPU on the worker is CPU taken from request threads.
GZIP_LEVEL: Final = 1
#: At most this much of an answer's body is read; the rest is dropped with the connection.
MAX_RESPONSE_BYTES: Final = 64 * 1024
_MAX_DETAIL: Final = 2000
_SOCKS_SCHEMES: Final = frozenset({"socks4", "socks4a", "socks5", "socks5h"})
#: The least time finish() waits for an answer, however late it is called.
_MIN_READ_TIMEOUT: Final = 0.01

logger = logging.getLogger(__name__)


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
    timeout: float = 0.0  # as the caller asked for it, for the failure message


class PostHogTransport:
    """Posts batches to PostHog's capture API.

    Args:
        api_key: the project API key; it goes into the body, never into a message.
        host: the base URL, e.g. ``https://us.i.posthog.com``.
        gzip: compress bodies with ``Content-Encoding: gzip``.
        environ: where proxy and CA settings are read (default ``os.environ``).
        historical_migration: mark every batch as a historical import, as posthog-python's
            option of that name does.
    """

    def __init__(
        self,
        api_key: str,
        host: str,
        *,
        gzip: bool = True,
        environ: Mapping[str, str] | None = None,
        historical_migration: bool = False,
    ) -> None:
        self._api_key = api_key
        self._migration = b"true" if historical_migration else b"false"
        self._host = host.rstrip("/")
        self._url = self._host + BATCH_PATH
        self._gzip = gzip
        self._environ = os.environ if environ is None else environ
        self._prefix = b'{"api_key":' + json.dumps(api_key).encode() + b',"batch":['
        self._headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if gzip:
            self._headers["Content-Encoding"] = "gzip"
        route = _route(self._url, self._environ)
        self._proxy_variable = route.variable
        self._problem = route.problem
        if route.problem is not None:
            logger.error("analytics_queue: %s", route.problem)
        self._pool = route.pool

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
        seconds = max(timeout, 0.001)
        deadline = time.monotonic() + seconds
        if self._pool is None:
            return InFlight(deadline, result=SendResult(False, error=self._problem, kind="proxy"))
        data = prepared.close(self._tail(time.time()))
        try:
            exchange = _http.start(self._pool, self._url, data, self._headers, seconds)
        except _http.ERRORS as exc:
            return InFlight(deadline, result=self._network_failure(exc, timeout))
        if exchange is None:  # this pool cannot split a request: send it whole now
            return InFlight(deadline, result=self._post(data, timeout))
        return InFlight(deadline, exchange=exchange, timeout=timeout)

    def finish(self, request: InFlight) -> SendResult:
        """Wait for the answer to a request :meth:`begin` wrote; never raises."""
        if request.exchange is None:
            assert request.result is not None
            return request.result
        remaining = max(request.deadline - time.monotonic(), _MIN_READ_TIMEOUT)
        _deadline.at = time.monotonic() + remaining
        try:
            response, text = request.exchange.finish(remaining, MAX_RESPONSE_BYTES)
        except _http.ERRORS as exc:
            return self._network_failure(exc, request.timeout)
        finally:
            _deadline.at = None
        return self._answer(response.status, response.headers, text)

    def _tail(self, sent_at: float) -> bytes:
        stamp = isoformat(sent_at).encode()
        return b"".join(
            (b'],"historical_migration":', self._migration, b',"sent_at":"', stamp, b'"}')
        )

    def _post(self, data: bytes, timeout: float) -> SendResult:
        """Send a whole body with urllib3's ``urlopen`` (a proxy, urllib3 1.x)."""
        seconds = max(timeout, 0.001)
        _deadline.at = time.monotonic() + seconds
        try:
            response = self._pool.request(  # type: ignore[union-attr]
                "POST",
                self._url,
                body=data,
                headers=self._headers,
                timeout=urllib3.Timeout(connect=seconds, read=seconds),
                retries=False,
                redirect=False,
                preload_content=False,
            )
            text = _read_body(response)
        except urllib3.exceptions.HTTPError as exc:
            return self._network_failure(exc, timeout)
        finally:
            _deadline.at = None
        return self._answer(response.status, response.headers, text)

    def _answer(self, status: int, headers: Mapping[str, str], text: bytes) -> SendResult:
        if 200 <= status < 300:
            return SendResult(True, status)
        detail = self._scrub(text.decode("utf-8", "replace")).strip()
        logger.debug("PostHog answered %d: %s", status, detail[:_MAX_DETAIL])
        kind, error = self._status_failure(status, headers.get("Location"))
        return SendResult(False, status, parse_retry_after(headers.get("Retry-After")), error, kind)

    def _status_failure(self, status: int, location: str | None) -> tuple[str, str]:
        phrase = _phrase(status)
        if 300 <= status < 400:
            return "redirect", _redirect_message(status, phrase, self._url, location)
        if status == 407:
            return "proxy", (
                f"{status} {phrase}: the proxy of {self._proxy_variable or 'the environment'} "
                "refused the credentials (set user:password@ in its URL)"
            )
        if status == 401:
            return "http", f"{status} {phrase}: check POSTHOG_API_KEY"
        return "http", f"{status} {phrase}".strip()

    def _network_failure(self, exc: Exception, timeout: float) -> SendResult:
        logger.debug(
            "sending to PostHog failed: %s",
            self._scrub(f"{type(exc).__name__}: {exc}")[:_MAX_DETAIL],
        )
        kind, error = classify(exc, timeout)
        if isinstance(exc, urllib3.exceptions.ProxyError):
            error = f"proxy of {self._proxy_variable}: {error}"
        return SendResult(False, error=error, kind=kind)

    def _scrub(self, message: str) -> str:
        return redact(message, self._api_key)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.clear()

    def reset_after_fork(self) -> None:
        """Give a fork child its own connections; the parent's sockets are left to the parent."""
        self._pool = _route(self._url, self._environ).pool


# -- classification ---------------------------------------------------------------------------


def classify(exc: BaseException, timeout: float) -> tuple[str, str]:
    """The class of a network failure and a short message of our own for it.

    Walks the exception's causes (urllib3 wraps the socket error) and looks for the first that
    says what happened.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = _classify_one(current, timeout)
        if found is not None:
            return found
        current = (
            getattr(current, "original_error", None)
            or getattr(current, "reason", None)
            or current.__cause__
            or current.__context__
        )
        if not isinstance(current, BaseException):
            current = None
    if isinstance(exc, urllib3.exceptions.ProxyError):
        return "proxy", "the proxy failed"
    return "connection", f"connection failed ({type(exc).__name__})"


def _classify_one(exc: BaseException, timeout: float) -> tuple[str, str] | None:
    name_error = getattr(urllib3.exceptions, "NameResolutionError", None)
    if (name_error is not None and isinstance(exc, name_error)) or isinstance(exc, socket.gaierror):
        return "dns", "host name not resolved (check POSTHOG_HOST and DNS)"
    if isinstance(exc, ConnectionRefusedError) or "refused" in str(exc).lower():
        return "refused", "connection refused (is the host up, and POSTHOG_HOST right?)"
    if isinstance(exc, urllib3.exceptions.NewConnectionError) and "timed out" not in str(exc):
        return None  # urllib3 2 makes it a ConnectTimeoutError: look at the socket error below
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return "timeout", f"no connection within {timeout:.3g} s"
    if isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return "timeout", f"no answer within {timeout:.3g} s"
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return (
            "tls",
            "TLS failure: certificate not trusted (set REQUESTS_CA_BUNDLE for a private CA)",
        )
    if isinstance(exc, (urllib3.exceptions.SSLError, ssl.SSLError)):
        return "tls", "TLS failure (handshake failed)"
    if isinstance(
        exc,
        (ConnectionResetError, http.client.RemoteDisconnected, urllib3.exceptions.ProtocolError),
    ):
        return "connection", "connection closed by the server before it answered"
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        return "connection", f"could not connect ({errno.errorcode[exc.errno]})"
    return None


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _redirect_message(status: int, phrase: str, url: str, location: str | None) -> str:
    """Where the host points and what to set POSTHOG_HOST to; never the path's query."""
    if not location:
        return f"{status} {phrase}: the host redirects (no Location); POSTHOG_HOST may be wrong"
    target = urlsplit(urljoin(url, location.strip()))
    if target.scheme not in ("http", "https") or not target.hostname:
        return f"{status} {phrase}: the host redirects elsewhere; POSTHOG_HOST may be wrong"
    origin = f"{target.scheme}://{target.hostname}"
    if target.port is not None:
        origin += f":{target.port}"
    path = target.path
    base = origin + path[: -len(BATCH_PATH)] if path.endswith(BATCH_PATH) else origin
    return (
        f"{status} {phrase}: the host redirects to {origin}; set POSTHOG_HOST={base} "
        "(redirects are not followed: the API key is in the body)"
    )


# -- reading an answer within the deadline ------------------------------------------------------


class _Deadline(threading.local):
    """Per-thread: the monotonic time by which the answer being read must be complete."""

    at: float | None = None


_deadline = _Deadline()


class _DeadlineReader(io.RawIOBase):
    """A socket's read side whose every read is cut to the time left before the deadline."""

    def __init__(self, sock: Any, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        # makefile, not SocketIO: the socket then stays open until this reader is closed, even
        # when http.client closes the connection first (an HTTP/1.0 or "Connection: close"
        # answer whose body is still to be read).
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline
        self._read_timeout = sock.gettimeout()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the answer took longer than the request's time limit")
        if self._read_timeout is not None:
            left = min(left, self._read_timeout)
        self._sock.settimeout(left)
        count: int | None = self._raw.readinto(buffer)
        return count

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """What http.client's response needs of a socket (``makefile``), under the deadline."""

    def __init__(self, sock: Any, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


class _DeadlineResponse(http.client.HTTPResponse):
    """http.client's response, reading through :class:`_DeadlineSocket` while a deadline is set."""

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        at = _deadline.at
        wrapped: Any = sock if at is None else _DeadlineSocket(sock, at)
        super().__init__(wrapped, *args, **kwargs)


def _bound_by_deadline(pool: urllib3.PoolManager, url: str) -> None:
    """Make the connections of ``url``'s pool read their answers under the send deadline.

    urllib3's timeouts bound each socket read, not the whole answer: a server (or proxy) that
    sends a byte now and then holds a request forever. The connection class's
    ``response_class`` (http.client's hook, also used for a proxy's CONNECT answer) is swapped
    for one whose reads stop at the deadline.
    """
    connection_pool = pool.connection_from_url(url)
    base = connection_pool.ConnectionCls
    connection_pool.ConnectionCls = type(
        "Deadline" + base.__name__, (base,), {"response_class": _DeadlineResponse}
    )


def _read_body(response: Any) -> bytes:
    """Up to MAX_RESPONSE_BYTES of the answer; a longer answer's connection is dropped."""
    data = response.read(MAX_RESPONSE_BYTES)
    if response.read(1):
        response.close()
    else:
        response.release_conn()
    return bytes(data)


# -- the proxy and the pool -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Route:
    pool: urllib3.PoolManager | None
    variable: str | None = None
    problem: str | None = None


_bypass: Any = getattr(urllib.request, "proxy_bypass_environment")  # noqa: B009 - untyped


def proxy_from_environment(url: str, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """The proxy for ``url`` as requests picks it: ``(variable name, value)``, or None.

    ``{scheme}_proxy``, ``{SCHEME}_PROXY``, ``all_proxy``, ``ALL_PROXY`` in that order; none when
    ``NO_PROXY``/``no_proxy`` covers the host. ``HTTP_PROXY`` is ignored in a CGI environment
    (``REQUEST_METHOD`` set), as the standard library does.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY")
    host = parts.hostname or ""
    if no_proxy and _bypass(host, {"no": no_proxy}):
        return None
    for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY", "all_proxy", "ALL_PROXY"):
        if name == "HTTP_PROXY" and "REQUEST_METHOD" in environ:
            continue
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _route(url: str, environ: Mapping[str, str]) -> _Route:
    """One small pool for ``url``, through the proxy the environment names; never raises.

    The CA bundle: ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE``, else certifi's (as requests).
    """
    options: dict[str, Any] = {
        "num_pools": 1,
        "maxsize": 2,
        "retries": False,
        "ca_certs": environ.get("REQUESTS_CA_BUNDLE")
        or environ.get("CURL_CA_BUNDLE")
        or certifi.where(),
    }
    found = proxy_from_environment(url, environ)
    if found is None:
        pool = urllib3.PoolManager(**options)
        _bound_by_deadline(pool, url)
        return _Route(pool)
    variable, value = found
    try:
        pool = _proxy_pool(variable, value, options)
        _bound_by_deadline(pool, url)
    except _ProxyProblem as problem:
        return _Route(
            None, variable, f"{problem}; analytics events cannot be sent until it is fixed"
        )
    except Exception as exc:  # urllib3's own refusals: ProxySchemeUnknown, LocationParseError, ...
        return _Route(
            None,
            variable,
            f"{variable} is not a usable proxy URL ({type(exc).__name__}); analytics events "
            "cannot be sent until it is fixed",
        )
    return _Route(pool, variable)


class _ProxyProblem(Exception):
    """Internal: a proxy setting that cannot be used, with a message safe to log."""


def _proxy_pool(variable: str, value: str, options: dict[str, Any]) -> urllib3.PoolManager:
    if "://" not in value:
        value = "http://" + value  # as requests does: "proxy:3128" means an HTTP proxy
    try:
        parsed = urllib3.util.parse_url(value)
    except urllib3.exceptions.LocationParseError:
        raise _ProxyProblem(f"{variable} is not a valid proxy URL") from None
    scheme = (parsed.scheme or "").lower()
    if not parsed.host:
        raise _ProxyProblem(f"{variable} is not a valid proxy URL (no host)")
    shown = f"{scheme}://{parsed.host}" + (f":{parsed.port}" if parsed.port else "")
    if scheme in _SOCKS_SCHEMES:
        try:
            from urllib3.contrib.socks import SOCKSProxyManager
        except ImportError:
            raise _ProxyProblem(
                f"{variable} names a SOCKS proxy ({shown}) but PySocks is not installed: "
                "pip install 'analytics-queue[socks]'"
            ) from None
        return SOCKSProxyManager(value, **options)
    if scheme not in ("http", "https"):
        raise _ProxyProblem(f"{variable} has an unsupported proxy scheme ({scheme or 'none'})")
    headers: dict[str, str] = {}
    if parsed.auth:
        user, _, password = parsed.auth.partition(":")
        headers = urllib3.util.make_headers(proxy_basic_auth=f"{unquote(user)}:{unquote(password)}")
    proxy_url = f"{scheme}://{parsed.host}" + (f":{parsed.port}" if parsed.port else "")
    return urllib3.ProxyManager(proxy_url, proxy_headers=headers, **options)
