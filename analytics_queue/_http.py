"""One HTTP request in two halves: write it now, read its answer later.

urllib3's ``urlopen`` writes a request and waits for the answer in one call. Between the two the
server works and the sender's thread could do something useful (serialize the next batch), so
:func:`start` writes the request on a connection of the pool and returns an :class:`Exchange`
whose :meth:`Exchange.finish` reads the answer and gives the connection back. It uses urllib3's
public connection API (``HTTPConnection.request``/``getresponse``, urllib3 2) and the pool's
``_get_conn``/``_put_conn``, the same steps ``urlopen`` takes, so that idle connections the
server dropped are noticed and replaced exactly as there.

:func:`start` returns None where it cannot split a request (urllib3 1.x, a proxy): the caller then
sends with ``urlopen`` as usual. Errors are raised as they come (``OSError``,
``http.client.HTTPException``, ``urllib3.exceptions.HTTPError``); the connection is closed first.

Not thread-safe: an exchange belongs to the thread that started it.
"""

from __future__ import annotations

import http.client
import importlib.metadata
from collections.abc import Mapping
from typing import Any, Final

import urllib3
from urllib3.connectionpool import HTTPConnectionPool

#: What a failed exchange may raise: the caller turns it into a failed attempt.
ERRORS: Final = (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError)

_SPLITS: Final = int(importlib.metadata.version("urllib3").split(".", 1)[0]) >= 2


class Exchange:
    """A request that was written; :meth:`finish` reads the answer, :meth:`abort` drops it."""

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: HTTPConnectionPool, conn: Any) -> None:
        self._pool = pool
        self._conn = conn

    def finish(self, timeout: float, limit: int) -> tuple[Any, bytes]:
        """The answer (a urllib3 ``HTTPResponse``) and up to ``limit`` bytes of its body,
        within ``timeout`` seconds. A longer body's connection is closed, not reused."""
        conn = self._conn
        try:
            conn.timeout = timeout  # applied to the socket by getresponse()
            response = conn.getresponse()
            data = response.read(limit)
            more = response.read(1)
        except BaseException:
            self.abort()
            raise
        if more:
            self.abort()
        else:
            self._pool._put_conn(conn)
            self._conn = None
        return response, bytes(data)

    def abort(self) -> None:
        """Close the connection without reading the answer (the pool opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._pool._put_conn(None)
            self._conn = None


def start(
    manager: urllib3.PoolManager,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout: float,
) -> Exchange | None:
    """Write a POST of ``body`` to ``url``; None when this pool cannot split a request.

    Raises:
        OSError, http.client.HTTPException, urllib3.exceptions.HTTPError: the request could not
            be written (connection refused, reset, timed out).
    """
    if not _SPLITS or isinstance(manager, urllib3.ProxyManager):
        return None
    pool = manager.connection_from_url(url)
    path = urllib3.util.parse_url(url).request_uri
    conn: Any = pool._get_conn()
    exchange = Exchange(pool, conn)
    try:
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        conn.request("POST", path, body=body, headers=headers, preload_content=False)
    except BaseException:
        exchange.abort()
        raise
    return exchange
