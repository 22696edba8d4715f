"""One event: checked and captured on the caller's thread, serialized on the worker's.

``capture_properties`` runs inside ``track()``: it copies the caller's properties (nested
containers included, so later changes by the caller do not reach the event), converts what JSON
cannot carry, and refuses NaN, infinities and unknown types with the path of the bad value. Its
fast path is one loop over a flat dict of str, int, float, bool and None.

``EventEncoder`` runs on the worker: it turns a queued tuple into the JSON bytes of one element of
PostHog's ``batch`` array, enriched with ``$lib``, ``$lib_version``, ``queued_at`` and the
configured ``app_version`` and ``environment``.

Pure functions and an immutable encoder: safe to call from any thread.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import uuid as uuid_module
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final, NamedTuple

from analytics_queue import _json
from analytics_queue._version import __version__
from analytics_queue.errors import (
    InvalidEventError,
    OversizeError,
    RefusedError,
    UnserializableError,
)

#: PostHog's capture service refuses an event over about 1 MB; we stay clear of it.
MAX_EVENT_BYTES: Final = 900 * 1024
#: Deeper nesting than this is refused (and catches reference cycles).
MAX_DEPTH: Final = 64
LIB_NAME: Final = "analytics_queue"

_UTC: Final = dt.timezone.utc
_INFINITIES: Final = (math.inf, -math.inf)
# Rough serialized overhead per value and per key, for the cheap size estimate in track().
_VALUE_OVERHEAD: Final = 4
# Above this estimate, track() measures the serialized size exactly (6: the worst expansion).
_EXACT_SIZE_ABOVE: Final = MAX_EVENT_BYTES // 6
_measure: Final = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False
).encode


class QueuedEvent(NamedTuple):
    """What track() puts on the queue: small, immutable, and cheap to build.

    ``uuid`` is the caller's uuid as a canonical str, or a random 128-bit int that the worker
    formats as a version-4 UUID; ``timestamp`` is None when it equals ``tracked_at``;
    ``size`` estimates its serialized bytes (for the queue's byte bound).
    """

    event: str
    distinct_id: str
    properties: dict[str, Any]
    timestamp: dt.datetime | None
    uuid: str | int
    tracked_at: float
    size: int = 0


def _path(parts: tuple[object, ...]) -> str:
    return "properties" + "".join(
        f"[{json.dumps(p)}]" if isinstance(p, str) else f"[{p!r}]" for p in parts
    )


class _Refusal(Exception):
    """Internal: carries the path of a refused value up to capture_properties."""

    def __init__(self, parts: tuple[object, ...], message: str, error: type[RefusedError]):
        super().__init__(message)
        self.parts = parts
        self.message = message
        self.error = error


def _convert(value: Any, parts: tuple[object, ...]) -> tuple[Any, int]:
    """Copy one non-trivial value into JSON-native types; returns it and its size estimate."""
    if len(parts) > MAX_DEPTH:
        raise _Refusal(parts, f"nested deeper than {MAX_DEPTH} levels", InvalidEventError)
    if isinstance(value, enum.Enum):
        return _convert(value.value, parts)
    if isinstance(value, bool):
        return bool(value), _VALUE_OVERHEAD
    if isinstance(value, int):
        return int(value), _VALUE_OVERHEAD
    if isinstance(value, float):
        if math.isnan(value) or value in _INFINITIES:
            raise _Refusal(parts, f"{value!r} cannot be sent as JSON", InvalidEventError)
        return float(value), _VALUE_OVERHEAD
    if isinstance(value, str):
        return plain_str(value), len(value) + _VALUE_OVERHEAD
    if value is None:
        return None, _VALUE_OVERHEAD
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        size = 2
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Refusal(
                    (*parts, key),
                    f"key of type {type(key).__name__} (keys must be str)",
                    UnserializableError,
                )
            converted, n = _convert(item, (*parts, key))
            out[plain_str(key)] = converted
            size += n + len(key) + _VALUE_OVERHEAD
        return out, size
    if isinstance(value, (list, tuple, set, frozenset)):
        items: list[Any] = []
        size = 2
        for index, item in enumerate(value):
            converted, n = _convert(item, (*parts, index))
            items.append(converted)
            size += n + 1
        return items, size
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        text = value.isoformat()
        return text, len(text) + _VALUE_OVERHEAD
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise _Refusal(parts, f"Decimal {value} cannot be sent as JSON", InvalidEventError)
        text = str(value)  # exact: a float would round money and overflow past 1e308
        return text, len(text) + _VALUE_OVERHEAD
    if isinstance(value, uuid_module.UUID):
        return str(value), 40
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return _convert(fields, parts)
    raise _Refusal(
        parts,
        f"object of type {type(value).__name__} is not JSON serializable",
        UnserializableError,
    )


def capture_properties(event: str, properties: Mapping[str, Any] | None) -> dict[str, Any]:
    """Copy and check ``properties`` for one event; returns the copy.

    Raises:
        RefusedError: a subclass naming the event and the property path of the bad value.
    """
    return capture_sized(event, properties)[0]


def capture_sized(event: str, properties: Mapping[str, Any] | None) -> tuple[dict[str, Any], int]:
    """Copy and check ``properties``; returns the copy and an estimate of its serialized bytes.

    The common case, a dict of str keys and str, int, float, bool or None values, is one copy
    and one loop over it; anything else takes the general path.

    Raises:
        RefusedError: a subclass naming the event and the property path of the bad value.
    """
    if type(properties) is dict:
        out = properties.copy()
        size = 0
        for key, value in out.items():
            kind = type(value)
            if type(key) is not str:
                break
            if kind is str:
                size += len(key) + len(value)
            elif kind is int or kind is bool or value is None:
                size += len(key)
            elif kind is not float or value - value != 0.0:  # NaN and infinities fail
                break
            else:
                size += len(key)
        else:
            size += _VALUE_OVERHEAD * len(out)
            if size <= _EXACT_SIZE_ABOVE:
                return out, size
    return _capture_general(event, properties)


def _capture_general(
    event: str, properties: Mapping[str, Any] | None
) -> tuple[dict[str, Any], int]:
    if properties is None:
        return {}, 0
    if not isinstance(properties, Mapping):
        raise UnserializableError(
            f"event {event!r}: properties must be a mapping, got {type(properties).__name__}"
        )
    out: dict[str, Any] = {}
    size = 0
    try:
        for key, value in properties.items():
            if type(key) is not str:
                if not isinstance(key, str):
                    raise _Refusal(
                        (key,),
                        f"key of type {type(key).__name__} (keys must be str)",
                        UnserializableError,
                    )
                key = plain_str(key)
            kind = type(value)
            if kind is str:
                size += len(value) + len(key) + _VALUE_OVERHEAD
            elif kind is int or kind is bool or value is None:
                size += len(key) + _VALUE_OVERHEAD
            elif kind is float:
                if value != value or value in _INFINITIES:
                    raise _Refusal((key,), f"{value!r} cannot be sent as JSON", InvalidEventError)
                size += len(key) + _VALUE_OVERHEAD
            else:
                value, n = _convert(value, (key,))
                size += n + len(key)
            out[key] = value
    except _Refusal as refusal:
        raise refusal.error(f"event {event!r}: {_path(refusal.parts)}: {refusal.message}") from None
    except RecursionError:
        raise InvalidEventError(f"event {event!r}: properties nest too deeply") from None
    if size > _EXACT_SIZE_ABOVE:
        # The estimate counts characters: UTF-8 and JSON escapes can make the real size up to
        # six times larger, and small numbers smaller. Rare big events are measured exactly.
        size = _serialized_size(event, out)
        if size > MAX_EVENT_BYTES:
            raise OversizeError(
                f"event {event!r}: properties take {size} bytes serialized, over the "
                f"{MAX_EVENT_BYTES}-byte limit of one event"
            )
    return out, size


def _serialized_size(event: str, properties: dict[str, Any]) -> int:
    try:
        return len(_measure(properties).encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidEventError(
            f"event {event!r}: a string is not valid Unicode (lone surrogate)"
        ) from None


def plain_str(value: str) -> str:
    """A str subclass (an Enum mixin, a markup string) as a plain str of the same text."""
    if type(value) is str:
        return value
    if isinstance(value, enum.Enum) and isinstance(value.value, str):
        return value.value
    return str.__str__(value)


def check_event_name(event: object) -> str:
    """Return the event name as a plain non-empty str (a str Enum gives its value)."""
    if isinstance(event, str) and event:
        return plain_str(event)
    kind = type(event).__name__
    shown = repr(event) if isinstance(event, (str, type(None), int, float)) else f"a {kind}"
    raise InvalidEventError(f"event name must be a non-empty str, got {shown}")


def check_distinct_id(event: str, distinct_id: object) -> str:
    """Return the distinct id as a non-empty str (int and UUID are stringified)."""
    if isinstance(distinct_id, str) and distinct_id:
        return plain_str(distinct_id)
    if isinstance(distinct_id, (int, uuid_module.UUID)) and not isinstance(distinct_id, bool):
        return str(int(distinct_id)) if isinstance(distinct_id, int) else str(distinct_id)
    kind = type(distinct_id).__name__
    shown = repr(distinct_id) if isinstance(distinct_id, (str, type(None), float)) else f"a {kind}"
    raise InvalidEventError(
        f"event {event!r}: distinct_id must be a non-empty str, int or UUID, got {shown}"
    )


def check_timestamp(event: str, timestamp: object) -> dt.datetime:
    """Return an aware UTC datetime from a datetime (naive means UTC) or an ISO-8601 string."""
    when: dt.datetime
    if isinstance(timestamp, dt.datetime):
        when = timestamp
    elif isinstance(timestamp, str):
        text = timestamp.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidEventError(
                f"event {event!r}: timestamp {timestamp!r} is not ISO-8601"
            ) from None
    else:
        raise InvalidEventError(
            f"event {event!r}: timestamp must be a datetime or an ISO-8601 str, "
            f"got {type(timestamp).__name__}"
        )
    if when.tzinfo is None:
        return when.replace(tzinfo=_UTC)
    return when.astimezone(_UTC)


def check_uuid(event: str, value: object) -> str:
    """Return the caller's uuid in canonical form."""
    if isinstance(value, uuid_module.UUID):
        return str(value)
    if isinstance(value, str):
        try:
            return str(uuid_module.UUID(value))
        except ValueError:
            pass
    raise InvalidEventError(f"event {event!r}: uuid {value!r} is not a valid UUID")


def format_uuid4(bits: int) -> str:
    """Format 128 random bits as a version-4, RFC 4122 variant UUID string.

    The version nibble becomes 4 and the variant's two high bits 10, as ``uuid.UUID`` sets them.
    """
    h = "%032x" % bits  # noqa: UP031 - faster than an f-string or format() here
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


#: A hex digit with its two high bits set to 10: the RFC 4122 variant.
_VARIANT: Final = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


_second_cache: list[Any] = [None, ""]


def isoformat(epoch: float) -> str:
    """UTC ISO-8601 with microseconds, as PostHog's SDK writes it.

    The date and time up to the second are formatted once per second and reused: the worker
    formats two stamps per event, mostly within the same second.
    """
    second = math.floor(epoch)
    micro = round((epoch - second) * 1_000_000)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    cached_second, prefix = _second_cache
    if cached_second != second:
        prefix = dt.datetime.fromtimestamp(second, _UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache[:] = (second, prefix)  # one list, swapped whole: safe to share
    return f"{prefix}.{micro:06d}+00:00"


class EventEncoder:
    """Serializes queued events into the JSON bytes of PostHog batch elements.

    Args:
        app_version: added to every event's properties as ``app_version`` when set.
        environment: added as ``environment`` when set.
        backend: the JSON backend (default: orjson when installed, see ``_json``).

    Expects properties as :func:`capture_properties` returns them; on those, every backend
    gives the same outcome. Its only state after construction is a cache of serialized event
    names; safe to share between threads.
    """

    __slots__ = ("_dumps", "_names", "_static", "_static_json", "_static_keys", "backend")

    def __init__(
        self,
        app_version: str | None = None,
        environment: str | None = None,
        *,
        backend: _json.Backend | None = None,
    ) -> None:
        static: dict[str, Any] = {"$lib": LIB_NAME, "$lib_version": __version__}
        if app_version is not None:
            static["app_version"] = app_version
        if environment is not None:
            static["environment"] = environment
        self.backend = backend or _json.DEFAULT
        self._dumps = self.backend.dumps
        self._static = static
        self._static_keys = frozenset(static) | {"queued_at"}
        # The enrichment as JSON members, written once: b'"$lib":"analytics_queue",...'.
        self._static_json = _json.STDLIB.dumps(static)[1:-1]
        # Event names as JSON: an app has few of them. A dict's get and set are atomic, so
        # threads sharing the encoder at worst serialize a name twice.
        self._names: dict[str, bytes] = {}

    def uuid_of(self, item: QueuedEvent) -> str:
        """The event's uuid as sent on the wire."""
        return item.uuid if type(item.uuid) is str else format_uuid4(int(item.uuid))

    def encode(self, item: QueuedEvent) -> bytes:
        """One batch element as UTF-8 JSON bytes.

        Raises:
            InvalidEventError: a str holds a lone surrogate (not valid UTF-8).
            OversizeError: the element is over :data:`MAX_EVENT_BYTES`.
        """
        queued_at = isoformat(item.tracked_at)
        timestamp = (
            queued_at
            if item.timestamp is None
            else item.timestamp.isoformat(timespec="microseconds")
        )
        dumps = self._dumps
        try:
            props = item.properties
            if not self._static_keys.isdisjoint(props):
                # The caller set an enrichment key: theirs wins, with no duplicate key.
                members = dumps({**self._static, "queued_at": queued_at, **props})[1:-1]
            elif props:
                members = _MEMBERS % (self._static_json, queued_at.encode(), dumps(props)[1:-1])
            else:
                members = _MEMBERS_ONLY_STATIC % (self._static_json, queued_at.encode())
            name = self._names.get(item.event)
            if name is None:
                name = dumps(item.event)
                if len(self._names) >= _NAMES_CACHED:
                    self._names.clear()
                self._names[item.event] = name
            data = _ELEMENT % (
                name,
                dumps(item.distinct_id),
                members,
                timestamp.encode(),
                self.uuid_of(item).encode(),
            )
        except UnicodeEncodeError:
            raise InvalidEventError(
                f"event {item.event!r}: a string is not valid Unicode (lone surrogate)"
            ) from None
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidEventError(f"event {item.event!r}: {exc}") from None
        if len(data) > MAX_EVENT_BYTES:
            raise OversizeError(
                f"event {item.event!r}: {len(data)} bytes serialized, over the "
                f"{MAX_EVENT_BYTES}-byte limit of one event"
            )
        return data


#: At most this many event names are kept serialized (the cache is emptied when full).
_NAMES_CACHED: Final = 512
_ELEMENT: Final = b'{"event":%s,"distinct_id":%s,"properties":{%s},"timestamp":"%s","uuid":"%s"}'
_MEMBERS: Final = b'%s,"queued_at":"%s",%s'
_MEMBERS_ONLY_STATIC: Final = b'%s,"queued_at":"%s"'
