"""What the capture server records: one `CapturedRequest` per HTTP request, one `CapturedEvent`
per accepted event.

Both are frozen value objects built once by the handler thread that received the request and
never changed afterwards, so they are safe to read from any thread. Their `repr` never shows the
API key (nor the parsed body, headers or properties, which may carry it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CapturedEvent", "CapturedRequest", "Headers"]


class Headers(Mapping[str, str]):
    """Read-only HTTP headers with case-insensitive lookup.

    Iteration yields the names as the client spelled them. A header sent more than once is
    joined with ``", "``. Immutable, so safe to share between threads.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        merged: dict[str, tuple[str, str]] = {}
        for name, value in items:
            key = name.lower()
            if key in merged:
                first_name, first_value = merged[key]
                merged[key] = (first_name, f"{first_value}, {value}")
            else:
                merged[key] = (name, value)
        self._items = merged

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({sorted(self)!r})"


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class CapturedRequest:
    """One HTTP request the capture server received, whatever it answered.

    Attributes:
        method: The HTTP method, e.g. ``"POST"``.
        path: The path without the query string, e.g. ``"/batch/"``.
        query: The raw query string (``""`` when there was none).
        headers: The request headers, looked up case-insensitively.
        status: The status code answered, or ``None`` when the server never answered (a `hang`
            or `reset_connections` fault).
        api_key: The project token the request carried (``api_key``/``token`` of the batch, or of
            its events), or ``None``. Kept for assertions; never shown by ``repr``.
        body_size: Bytes of the body on the wire (compressed size when gzipped).
        decompressed_size: Bytes of the JSON payload after gunzip (and ``?data=``/form/base64
            unwrapping); 0 when the payload could not be decoded.
        gzipped: Whether the payload was gzip-compressed.
        sent_at: The batch's ``sent_at`` string, if it had one.
        received_at: ``time.time()`` when the request was fully read.
        event_count: Number of events the payload held (0 when it could not be parsed).
        accepted: Number of those events the server ingested: ``event_count`` on a 200,
            ``k`` under `accept_then_fail`, otherwise 0.
        body: The parsed JSON payload, or ``None`` when it could not be decoded.
        error: The plain-text error body answered, or ``None`` on success.
    """

    method: str
    path: str
    query: str
    headers: Headers
    status: int | None
    api_key: str | None
    body_size: int
    decompressed_size: int
    gzipped: bool
    sent_at: str | None
    received_at: float
    event_count: int
    accepted: int = 0
    body: Any = None
    error: str | None = None
    _raw_events: tuple[dict[str, Any], ...] = field(default=(), compare=False)

    @property
    def raw_events(self) -> tuple[dict[str, Any], ...]:
        """The event objects of the payload as sent, accepted or not (empty if unparseable).

        Useful to check what a client sent in a request the server refused, e.g. that a retry
        carried the same uuids.
        """
        return self._raw_events

    @property
    def event_names(self) -> list[str]:
        """The ``event`` name of each event of the payload, in order (non-strings skipped)."""
        return [e["event"] for e in self._raw_events if isinstance(e.get("event"), str)]

    def __repr__(self) -> str:
        key = "<redacted>" if self.api_key is not None else None
        return (
            f"CapturedRequest(method={self.method!r}, path={self.path!r}, status={self.status!r}, "
            f"event_count={self.event_count}, accepted={self.accepted}, "
            f"body_size={self.body_size}, gzipped={self.gzipped}, api_key={key}, "
            f"error={self.error!r})"
        )


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class CapturedEvent:
    """One event the capture server accepted.

    Attributes:
        event: The event name.
        distinct_id: The distinct id as PostHog stores it: the top-level ``distinct_id`` or else
            ``properties.distinct_id``, as a string (non-strings JSON-encoded), at most 200
            characters.
        properties: The event's ``properties`` object (``{}`` when absent).
        uuid: The event's ``uuid`` as sent, or ``None`` when the client sent none (real PostHog
            then assigns a UUIDv7).
        timestamp: The event's ``timestamp`` string as sent, or ``None``.
        data: The raw event object as parsed from the payload.
        request: The request the event arrived in.
    """

    event: str
    distinct_id: str
    properties: dict[str, Any]
    uuid: str | None
    timestamp: str | None
    data: dict[str, Any]
    request: CapturedRequest

    def __repr__(self) -> str:
        return (
            f"CapturedEvent(event={self.event!r}, distinct_id={self.distinct_id!r}, "
            f"uuid={self.uuid!r}, timestamp={self.timestamp!r}, "
            f"property_keys={sorted(self.properties)!r})"
        )
