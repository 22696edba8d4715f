"""What a sender is: the :class:`Transport` protocol, its :class:`SendResult`, and the local one.

A sender delivers one batch of already-serialized events, synchronously, and says how it went;
it knows nothing about threads, queues or retries (the worker owns those) and returns a
:class:`SendResult` instead of raising, so that a failure is a value the worker can count.

This module is light on purpose: the core imports it, while the HTTP sender to PostHog
(:class:`analytics_queue.transport.PostHogTransport`, with urllib3 and TLS behind it) is
imported only when an instance has an API key.

Thread safety: :class:`SendResult` is immutable; a sender is used by one thread at a time.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

local_logger = logging.getLogger("analytics_queue.local")


@dataclass(frozen=True, slots=True)
class SendResult:
    """How one attempt went.

    Attributes:
        ok: the server acknowledged the batch (2xx).
        status: the HTTP status, or None when no response arrived (network error, timeout).
        retry_after: seconds the server asked us to wait (``Retry-After``), if any.
        error: what went wrong, short and without secrets or server text; None when ok. Safe to
            show in health and metrics.
        kind: the class of failure: ``refused``, ``dns``, ``tls``, ``timeout``, ``connection``,
            ``proxy``, ``redirect``, ``http``; None when ok or unknown.
    """

    ok: bool
    status: int | None = None
    retry_after: float | None = None
    error: str | None = None
    kind: str | None = None


class Transport(Protocol):
    """Sends one batch; never raises for a delivery failure."""

    def send(self, elements: Sequence[bytes], timeout: float) -> SendResult:
        """Deliver ``elements`` (each the JSON bytes of one event) within ``timeout`` seconds."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class Pipelined(Protocol):
    """Optional for a sender: a send in three steps, so that its caller can work between them.

    ``prepare(elements)`` builds the request body (no I/O; the result is opaque to the caller);
    ``begin(prepared, timeout)`` writes the request; ``finish(request)`` reads its answer.
    ``send`` is the three in a row. None of them raises for a delivery failure. The worker
    serializes the next batch between ``begin`` and ``finish``. Checked with ``isinstance``.
    """

    def prepare(self, elements: Sequence[bytes]) -> Any:
        """The body of a request carrying ``elements``, for one later ``begin``."""
        ...

    def begin(self, prepared: Any, timeout: float) -> Any:
        """Write the request; ``timeout`` bounds it until ``finish`` has the answer."""
        ...

    def finish(self, request: Any) -> SendResult:
        """Wait for the answer to the request ``begin`` wrote."""
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


class LocalTransport:
    """The no-API-key fallback: logs, does not send.

    One INFO line per batch on ``analytics_queue.local`` (how many events, and their names), and
    each event's JSON at DEBUG on the same logger: payloads hold user data (distinct ids, e-mail
    addresses in properties), which the library never logs above DEBUG. To see them in
    development: ``logging.getLogger("analytics_queue.local").setLevel(logging.DEBUG)``.
    """

    def send(self, elements: Sequence[bytes], timeout: float) -> SendResult:
        if local_logger.isEnabledFor(logging.INFO):
            names: Counter[str] = Counter()
            for element in elements:
                try:
                    names[str(json.loads(element).get("event"))] += 1
                except (ValueError, AttributeError):
                    names["?"] += 1
            local_logger.info(
                "analytics (local mode, not sent): %d event(s): %s",
                len(elements),
                ", ".join(
                    f"{name} x{count}" if count > 1 else name for name, count in names.items()
                ),
            )
        if local_logger.isEnabledFor(logging.DEBUG):
            for element in elements:
                local_logger.debug("%s", element.decode("utf-8"))
        return SendResult(True, None)

    def close(self) -> None:
        pass

    def reset_after_fork(self) -> None:
        pass
