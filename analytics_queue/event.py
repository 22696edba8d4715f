"""One event: checked and captured on the caller's thread, serialized on the worker's.

``capture_properties`` runs inside ``track()``: it copies the caller's properties (nested
containers included, so later changes by the caller do not reach the event), converts what JSON
cannot carry, and refuses NaN, infinities, lone surrogates and unknown types with the path of the
bad value. Its fast path is one loop over a flat dict of str, int, float, bool and None; only
strings that are not ASCII are checked for lone surrogates.

The ``check_*`` functions refuse what PostHog would change or drop later: an event name or a
distinct id over 200 characters (PostHog cuts both there, see :data:`MAX_EVENT_NAME_LENGTH`), and
strings that are not valid Unicode. Refusal messages never call ``repr()`` or ``str()`` on the
caller's objects (a hostile ``__repr__`` could block ``track()``): they show type names, and
values the library made itself, cut to a readable length.

``EventEncoder`` runs on the worker: it turns a queued tuple into the JSON bytes of one element of
PostHog's ``batch`` array, enriched as posthog-python enriches it (``$lib``, ``$geoip_disable``,
``$is_server``, super properties...) plus ``queued_at`` and the configured ``app_version`` and
``environment``; a ``before_send`` hook, when set, sees and may change each event first.

Pure functions and an immutable encoder: safe to call from any thread.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import os
import sys
import uuid as uuid_module
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from analytics_queue import _json
from analytics_queue._version import __version__
from analytics_queue.errors import (
    InvalidEventError,
    OversizeError,
    RefusedError,
    UnserializableError,
)

if TYPE_CHECKING:
    from analytics_queue.hooks import BeforeSend

#: PostHog's capture service refuses an event over about 1 MB; we stay clear of it.
MAX_EVENT_BYTES: Final = 900 * 1024
#: Deeper nesting than this is refused (and catches reference cycles).
MAX_DEPTH: Final = 64
#: PostHog's ingestion cuts event names to 200 characters (``sanitizeEventName`` in
#: nodejs/src/utils/db/utils.ts, a JavaScript ``substr(0, 200)``: UTF-16 code units), so two
#: long names that differ after 200 become one event; track() refuses longer names.
MAX_EVENT_NAME_LENGTH: Final = 200
#: PostHog's capture service cuts a distinct id to 200 characters
#: (``RawEvent::extract_distinct_id`` in rust/common/types/src/event.rs), which would merge
#: different users into one person; track() refuses longer ids.
MAX_DISTINCT_ID_LENGTH: Final = 200
#: How many characters of a name, id or key a message shows.
SHOWN_CHARACTERS: Final = 40
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
    ``size`` estimates its serialized bytes (for the queue's byte bound); ``options`` is None
    for a plain ``track()`` event with the instance's defaults.
    """

    event: str
    distinct_id: str
    properties: dict[str, Any]
    timestamp: dt.datetime | None
    uuid: str | int
    tracked_at: float
    options: EventOptions | None = None
    size: int = 0


class EventOptions(NamedTuple):
    """What makes an event other than a plain ``track()`` one.

    ``disable_geoip``: the call's ``disable_geoip`` (None: the instance's); ``system``: whether
    the event gets the runtime properties (``$python_version``, ``$os``...), as posthog-python
    gives them to captured events only; ``top_level``: members beside ``properties``, such as
    ``$set`` of a ``$set`` event.
    """

    disable_geoip: bool | None = None
    system: bool = True
    top_level: dict[str, Any] | None = None


def _path(parts: tuple[object, ...]) -> str:
    return "properties" + "".join(f"[{_part(p)}]" for p in parts)


def _part(part: object) -> str:
    if isinstance(part, str):
        text = plain_str(part)
        if len(text) > SHOWN_CHARACTERS:
            return json.dumps(text[:SHOWN_CHARACTERS])[:-1] + '..."'
        return json.dumps(text)
    if type(part) is int:  # an index we counted, or an int key
        return int.__repr__(part)
    return f"<{type(part).__name__} key>"


def shown(text: str) -> str:
    """A str the library holds, quoted for a message and cut to :data:`SHOWN_CHARACTERS`."""
    text = plain_str(text)
    if len(text) > SHOWN_CHARACTERS:
        return f"{str.__repr__(text[:SHOWN_CHARACTERS])}... ({len(text)} characters)"
    return str.__repr__(text)


def shown_value(value: object) -> str:
    """A caller's value in a message, without calling its own __repr__."""
    if value is None:
        return "None"
    if isinstance(value, str):
        return shown(value)
    if type(value) is int:
        return int.__repr__(value) if value.bit_length() < 64 else "a large int"
    if type(value) is float:
        return float.__repr__(value)
    return f"a {type(value).__name__}"


def has_surrogate(text: str) -> bool:
    """True when ``text`` holds a lone surrogate (it cannot be encoded as UTF-8)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_NOT_UNICODE: Final = "a str that is not valid Unicode (a lone surrogate)"


class Refusal(Exception):
    """A refused value and its path inside the properties (raised by :func:`convert_value`)."""

    def __init__(self, parts: tuple[object, ...], message: str, error: type[RefusedError]):
        super().__init__(message)
        self.parts = parts
        self.message = message
        self.error = error


def convert_value(value: Any, parts: tuple[object, ...]) -> tuple[Any, int]:
    """Copy one non-trivial value into JSON-native types; returns it and its size estimate."""
    if len(parts) > MAX_DEPTH:
        raise Refusal(parts, f"nested deeper than {MAX_DEPTH} levels", InvalidEventError)
    if isinstance(value, enum.Enum):
        return convert_value(value.value, parts)
    if isinstance(value, bool):
        return bool(value), _VALUE_OVERHEAD
    if isinstance(value, int):
        return int.__int__(value), _VALUE_OVERHEAD  # int(): a subclass's own __int__
    if isinstance(value, float):
        number = float.__float__(value)
        if math.isnan(number) or number in _INFINITIES:
            raise Refusal(
                parts, f"{float.__repr__(number)} cannot be sent as JSON", InvalidEventError
            )
        return number, _VALUE_OVERHEAD
    if isinstance(value, str):
        text = plain_str(value)
        if has_surrogate(text):
            raise Refusal(parts, _NOT_UNICODE, InvalidEventError)
        return text, len(text) + _VALUE_OVERHEAD
    if value is None:
        return None, _VALUE_OVERHEAD
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        size = 2
        for key, item in value.items():
            if not isinstance(key, str):
                raise Refusal(
                    (*parts, key),
                    f"key of type {type(key).__name__} (keys must be str)",
                    UnserializableError,
                )
            name = plain_str(key)
            if has_surrogate(name):
                raise Refusal((*parts, key), f"key: {_NOT_UNICODE}", InvalidEventError)
            converted, n = convert_value(item, (*parts, name))
            out[name] = converted
            size += n + len(name) + _VALUE_OVERHEAD
        return out, size
    if isinstance(value, (list, tuple, set, frozenset)):
        items: list[Any] = []
        size = 2
        for index, item in enumerate(value):
            converted, n = convert_value(item, (*parts, index))
            items.append(converted)
            size += n + 1
        return items, size
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        text = value.isoformat()
        return text, len(text) + _VALUE_OVERHEAD
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise Refusal(parts, f"Decimal {value} cannot be sent as JSON", InvalidEventError)
        text = Decimal.__str__(value)  # exact: a float would round money and overflow past 1e308
        return text, len(text) + _VALUE_OVERHEAD
    if isinstance(value, uuid_module.UUID):
        return uuid_module.UUID.__str__(value), 40
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return convert_value(fields, parts)
    raise Refusal(
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

    The common case, a dict of ASCII str keys and values that are ASCII str, int, float, bool
    or None, is one copy and one loop over it; anything else takes the general path.

    Raises:
        RefusedError: a subclass naming the event and the property path of the bad value.
    """
    if type(properties) is dict:
        out = properties.copy()
        size = 0
        for key, value in out.items():
            kind = type(value)
            if type(key) is not str or not key.isascii():
                break
            if kind is str:
                if not value.isascii():  # may hold a lone surrogate: the general path checks
                    break
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
            f"event {shown(event)}: properties must be a mapping, got {type(properties).__name__}"
        )
    out: dict[str, Any] = {}
    size = 0
    try:
        for key, value in properties.items():
            if type(key) is not str:
                if not isinstance(key, str):
                    raise Refusal(
                        (key,),
                        f"key of type {type(key).__name__} (keys must be str)",
                        UnserializableError,
                    )
                key = plain_str(key)
            if not key.isascii() and has_surrogate(key):
                raise Refusal((key,), f"key: {_NOT_UNICODE}", InvalidEventError)
            kind = type(value)
            if kind is str:
                if not value.isascii() and has_surrogate(value):
                    raise Refusal((key,), _NOT_UNICODE, InvalidEventError)
                size += len(value) + len(key) + _VALUE_OVERHEAD
            elif kind is int or kind is bool or value is None:
                size += len(key) + _VALUE_OVERHEAD
            elif kind is float:
                if value != value or value in _INFINITIES:
                    raise Refusal((key,), f"{value!r} cannot be sent as JSON", InvalidEventError)
                size += len(key) + _VALUE_OVERHEAD
            else:
                value, n = convert_value(value, (key,))
                size += n + len(key)
            out[key] = value
    except Refusal as refusal:
        raise refusal.error(
            f"event {shown(event)}: {_path(refusal.parts)}: {refusal.message}"
        ) from None
    except RecursionError:
        raise InvalidEventError(f"event {shown(event)}: properties nest too deeply") from None
    if size > _EXACT_SIZE_ABOVE:
        # The estimate counts characters: UTF-8 and JSON escapes can make the real size up to
        # six times larger, and small numbers smaller. Rare big events are measured exactly.
        size = _serialized_size(event, out)
        if size > MAX_EVENT_BYTES:
            raise OversizeError(
                f"event {shown(event)}: properties take {size} bytes serialized, over the "
                f"{MAX_EVENT_BYTES}-byte limit of one event"
            )
    return out, size


def _serialized_size(event: str, properties: dict[str, Any]) -> int:
    try:
        return len(_measure(properties).encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidEventError(
            f"event {shown(event)}: a string is not valid Unicode (lone surrogate)"
        ) from None


def plain_str(value: str) -> str:
    """A str subclass (an Enum mixin, a markup string) as a plain str of the same text."""
    if type(value) is str:
        return value
    if isinstance(value, enum.Enum) and isinstance(value.value, str):
        return value.value
    return str.__str__(value)


def check_event_name(event: object) -> str:
    """Return the event name as a plain str (a str Enum gives its value).

    Raises:
        InvalidEventError: not a str, empty, over :data:`MAX_EVENT_NAME_LENGTH` characters, or
            not valid Unicode.
    """
    if not isinstance(event, str):
        raise InvalidEventError(f"event name must be a non-empty str, got {shown_value(event)}")
    name = plain_str(event)
    if not name:
        raise InvalidEventError("event name must be a non-empty str, got ''")
    if len(name) > MAX_EVENT_NAME_LENGTH or (
        not name.isascii()
        and len(name.encode("utf-16-le", "surrogatepass")) > 2 * MAX_EVENT_NAME_LENGTH
    ):
        raise InvalidEventError(
            f"event name {shown(name)} is longer than {MAX_EVENT_NAME_LENGTH} characters "
            "(PostHog would cut it)"
        )
    if has_surrogate(name):
        raise InvalidEventError(f"event name {shown(name)}: {_NOT_UNICODE}")
    return name


def check_distinct_id(event: str, distinct_id: object) -> str:
    """Return the distinct id as a non-empty str (int and UUID are stringified).

    Raises:
        InvalidEventError: not a non-empty str, int or UUID, over
            :data:`MAX_DISTINCT_ID_LENGTH` characters, or not valid Unicode.
    """
    ident: str | None = None
    if isinstance(distinct_id, str):
        ident = plain_str(distinct_id)
    elif isinstance(distinct_id, int) and not isinstance(distinct_id, bool):
        number = int.__int__(distinct_id)  # int(): a subclass's own __int__
        # 4 bits per digit at least: a longer int is over the limit, and str() of it is slow.
        if number.bit_length() > 4 * MAX_DISTINCT_ID_LENGTH:
            raise InvalidEventError(_id_too_long(event))
        ident = str(number)
    elif isinstance(distinct_id, uuid_module.UUID):
        ident = uuid_module.UUID.__str__(distinct_id)
    if not ident:
        raise InvalidEventError(
            f"event {shown(event)}: distinct_id must be a non-empty str, int or UUID, "
            f"got {shown_value(distinct_id)}"
        )
    if len(ident) > MAX_DISTINCT_ID_LENGTH:
        raise InvalidEventError(_id_too_long(event))
    if has_surrogate(ident):
        raise InvalidEventError(f"event {shown(event)}: distinct_id is {_NOT_UNICODE}")
    return ident


def _id_too_long(event: str) -> str:
    return (
        f"event {shown(event)}: distinct_id is longer than {MAX_DISTINCT_ID_LENGTH} characters "
        "(PostHog would cut it, merging different users)"
    )


def check_timestamp(event: str, timestamp: object) -> dt.datetime:
    """Return an aware UTC datetime from a datetime (naive means UTC) or an ISO-8601 string."""
    when: dt.datetime
    if isinstance(timestamp, dt.datetime):
        when = timestamp
    elif isinstance(timestamp, str):
        given = plain_str(timestamp)
        text = given.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidEventError(
                f"event {shown(event)}: timestamp {shown(given)} is not ISO-8601"
            ) from None
    else:
        raise InvalidEventError(
            f"event {shown(event)}: timestamp must be a datetime or an ISO-8601 str, "
            f"got {type(timestamp).__name__}"
        )
    if when.tzinfo is None:
        return when.replace(tzinfo=_UTC)
    return when.astimezone(_UTC)


def check_uuid(event: str, value: object) -> str:
    """Return the caller's uuid in canonical form."""
    if isinstance(value, uuid_module.UUID):
        return uuid_module.UUID.__str__(value)
    if isinstance(value, str):
        text = plain_str(value)
        try:
            return str(uuid_module.UUID(text))
        except ValueError:
            pass
        raise InvalidEventError(f"event {shown(event)}: uuid {shown(text)} is not a valid UUID")
    raise InvalidEventError(
        f"event {shown(event)}: uuid must be a UUID or its str, got {shown_value(value)}"
    )


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


def system_properties() -> dict[str, Any]:
    """The runtime properties posthog-python adds to every captured event.

    ``$python_runtime``, ``$python_version``, ``$os``, ``$os_version`` and, on Linux,
    ``$os_distro``, with posthog-python's values (its Linux figures come from the os-release
    file, read here through the standard library). Read once per encoder, never per event.
    """
    import platform  # read once per encoder: not worth its import at package import

    props: dict[str, Any] = {
        "$python_runtime": platform.python_implementation(),
        "$python_version": "{}.{}.{}".format(*sys.version_info[:3]),
    }
    name, version, distro = _os_info(sys.platform)
    props["$os"] = name
    props["$os_version"] = version
    if distro:
        props["$os_distro"] = distro
    return props


def _os_info(platform_name: str) -> tuple[str, str, str]:
    import platform

    if platform_name.startswith("win"):
        return "Windows", platform.win32_ver()[0] or "", ""
    if platform_name == "darwin":
        return "Mac OS X", platform.mac_ver()[0] or "", ""
    if platform_name.startswith("linux"):
        try:
            release = platform.freedesktop_os_release()
        except OSError:
            return "Linux", "", ""
        return "Linux", release.get("VERSION_ID", ""), release.get("NAME", "")
    if platform_name.startswith("freebsd"):
        return "FreeBSD", platform.release(), ""
    return platform_name, platform.release(), ""


def release_id() -> str | None:
    """``POSTHOG_RELEASE_ID`` as posthog-python reads it: trimmed, blank meaning unset."""
    raw = os.environ.get("POSTHOG_RELEASE_ID")
    return None if raw is None else (raw.strip() or None)


#: At most this many event names are kept serialized (the cache is emptied when full).
_NAMES_CACHED: Final = 512
_ELEMENT: Final = b'{"event":%s,"distinct_id":%s,"properties":{%s},"timestamp":"%s","uuid":"%s"%s}'
_MEMBERS: Final = b'%s"queued_at":"%s",%s,%s'
_MEMBERS_NO_PROPS: Final = b'%s"queued_at":"%s",%s'


class _Layer(NamedTuple):
    """The enrichment of one kind of event, as a dict and as JSON members."""

    over: dict[str, Any]  # wins over the caller's properties
    over_json: bytes
    keys: frozenset[str]  # every key the enrichment sets, "queued_at" included


class EventEncoder:
    """Serializes queued events into the JSON bytes of PostHog batch elements.

    The properties of an event are merged in posthog-python's order, each layer over the one
    before: ``app_version``, ``environment``, ``queued_at`` and ``$release_id``; the caller's
    properties (with the context's tags under them); the runtime properties (captured events
    only); ``$lib`` and ``$lib_version``; ``$geoip_disable: true`` (unless GeoIP is on for the
    event); ``super_properties``; ``$is_server: true``.

    Args:
        app_version: added to every event's properties as ``app_version`` when set.
        environment: added as ``environment`` when set.
        disable_geoip: add ``$geoip_disable: true`` unless an event says otherwise (True).
        super_properties: properties merged over every event's own, as posthog-python does.
        before_send: called with each event as a dict on the worker; see :mod:`.hooks`.
        backend: the JSON backend (default: orjson when installed, see ``_json``).

    Expects properties as :func:`capture_properties` returns them; on those, every backend
    gives the same outcome. Its only state after construction is a cache of serialized event
    names; safe to share between threads.
    """

    __slots__ = (
        "_before_send",
        "_default_geoip_off",
        "_defaults",
        "_defaults_json",
        "_dumps",
        "_layers",
        "_names",
        "backend",
    )

    def __init__(
        self,
        app_version: str | None = None,
        environment: str | None = None,
        *,
        disable_geoip: bool = True,
        super_properties: Mapping[str, Any] | None = None,
        before_send: Callable[[dict[str, Any]], Any] | None = None,
        backend: _json.Backend | None = None,
    ) -> None:
        self.backend = backend or _json.default()
        self._dumps = self.backend.dumps
        # Event names as JSON: an app has few of them. A dict's get and set are atomic, so
        # threads sharing the encoder at worst serialize a name twice.
        self._names: dict[str, bytes] = {}
        defaults: dict[str, Any] = {}
        if app_version is not None:
            defaults["app_version"] = app_version
        if environment is not None:
            defaults["environment"] = environment
        release = release_id()
        if release is not None:
            defaults["$release_id"] = release
        self._defaults = defaults
        # Written once: b'"app_version":"2.0",...'; queued_at follows it.
        self._defaults_json = self._dumps(defaults)[1:-1] + (b"," if defaults else b"")
        supers = dict(super_properties or {})
        system = system_properties()
        self._layers: dict[tuple[bool, bool], _Layer] = {}
        for with_system in (True, False):
            for geoip_off in (True, False):
                over: dict[str, Any] = dict(system) if with_system else {}
                over["$lib"] = LIB_NAME
                over["$lib_version"] = __version__
                if geoip_off:
                    over["$geoip_disable"] = True
                over.update(supers)
                over["$is_server"] = True
                keys = frozenset(defaults) | frozenset(over) | {"queued_at"}
                self._layers[with_system, geoip_off] = _Layer(over, self._dumps(over)[1:-1], keys)
        self._default_geoip_off = disable_geoip
        self._before_send: BeforeSend | None = None
        if before_send is not None:
            from analytics_queue.hooks import BeforeSend

            self._before_send = BeforeSend(before_send)

    def uuid_of(self, item: QueuedEvent) -> str:
        """The event's uuid as sent on the wire."""
        return item.uuid if type(item.uuid) is str else format_uuid4(int(item.uuid))

    def _layer(self, options: EventOptions | None) -> _Layer:
        if options is None:
            return self._layers[True, self._default_geoip_off]
        geoip_off = (
            self._default_geoip_off if options.disable_geoip is None else options.disable_geoip
        )
        return self._layers[options.system, geoip_off]

    def _timestamps(self, item: QueuedEvent) -> tuple[str, str]:
        queued_at = isoformat(item.tracked_at)
        timestamp = (
            queued_at
            if item.timestamp is None
            else item.timestamp.isoformat(timespec="microseconds")
        )
        return queued_at, timestamp

    def to_dict(self, item: QueuedEvent) -> dict[str, Any]:
        """The batch element of ``item`` as a dict (what ``before_send`` receives)."""
        queued_at, timestamp = self._timestamps(item)
        layer = self._layer(item.options)
        element: dict[str, Any] = {
            "event": item.event,
            "distinct_id": item.distinct_id,
            "properties": {
                **self._defaults,
                "queued_at": queued_at,
                **item.properties,
                **layer.over,
            },
            "timestamp": timestamp,
            "uuid": self.uuid_of(item),
        }
        if item.options is not None and item.options.top_level:
            element.update(item.options.top_level)
        return element

    def encode(self, item: QueuedEvent) -> bytes:
        """One batch element as UTF-8 JSON bytes.

        Raises:
            InvalidEventError: a str holds a lone surrogate (not valid UTF-8).
            OversizeError: the element is over :data:`MAX_EVENT_BYTES`.
            RefusedError: ``before_send`` dropped the event (reason ``before_send``) or
                failed on it (``before_send_error``).
        """
        if self._before_send is not None:
            return self._check_size(item.event, self._before_send.run(self, item))
        queued_at, timestamp = self._timestamps(item)
        dumps = self._dumps
        try:
            props = item.properties
            layer = self._layer(item.options)
            if not layer.keys.isdisjoint(props):
                # The caller set an enrichment key: merge in order, with no duplicate key.
                members = dumps({**self._defaults, "queued_at": queued_at, **props, **layer.over})[
                    1:-1
                ]
            elif props:
                members = _MEMBERS % (
                    self._defaults_json,
                    queued_at.encode(),
                    layer.over_json,
                    dumps(props)[1:-1],
                )
            else:
                members = _MEMBERS_NO_PROPS % (
                    self._defaults_json,
                    queued_at.encode(),
                    layer.over_json,
                )
            top = b""
            if item.options is not None and item.options.top_level:
                top = b"," + dumps(item.options.top_level)[1:-1]
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
                top,
            )
        except UnicodeEncodeError:
            raise InvalidEventError(
                f"event {shown(item.event)}: a string is not valid Unicode (lone surrogate)"
            ) from None
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidEventError(f"event {shown(item.event)}: {exc}") from None
        return self._check_size(item.event, data)

    def dumps_element(self, event: str, element: dict[str, Any]) -> bytes:
        """JSON bytes of a batch element given as a JSON-native dict.

        Raises:
            InvalidEventError: not serializable (a lone surrogate, NaN).
        """
        try:
            return self._dumps(element)
        except UnicodeEncodeError:
            raise InvalidEventError(
                f"event {shown(event)}: a string is not valid Unicode (lone surrogate)"
            ) from None
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidEventError(f"event {shown(event)}: {exc}") from None

    @staticmethod
    def _check_size(event: str, data: bytes) -> bytes:
        if len(data) > MAX_EVENT_BYTES:
            raise OversizeError(
                f"event {shown(event)}: {len(data)} bytes serialized, over the "
                f"{MAX_EVENT_BYTES}-byte limit of one event"
            )
        return data
