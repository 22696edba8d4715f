"""PostHog's capture protocol as pure functions: routes, payload decoding and validation.

No sockets and no threads here: `decode_request` turns one request (path, query string, headers,
body bytes) into a `Decoded` verdict, following PostHog's Rust capture service as described in
``shared/reference/posthog.md``:

1. The payload is the body, or a non-empty ``?data=`` query value. A form-encoded body
   (``Content-Type: application/x-www-form-urlencoded``) must be a form whose ``data`` field holds
   the payload; a payload that looks like base64 is decoded optimistically.
2. It is gunzipped when ``?compression=gzip|gzip-js`` (or the form's ``compression``),
   ``Content-Encoding: gzip`` or the magic bytes ``1f 8b 08`` say so. Bad gzip → 400; more than
   the route limit once decompressed → 413.
3. Not UTF-8 → 400; not (strict) JSON → 400 ``failed to parse request: ...``; JSON that is not a
   batch, an event or a list of events → 400 ``failed to hydrate events from request: ...``;
   no events → 400 ``request holds no event``.
4. The token (the batch's ``api_key``/``token``, else the events' ``token``/``api_key``/``$token``
   or ``properties.token``) must exist and look like a project key → otherwise 401.
5. Each event needs a non-empty ``event`` and a ``distinct_id`` → otherwise 400.
6. An event re-serialized over 1,000,000 bytes → 413 ``maximum event size exceeded``.

Any failure rejects the whole request: `Decoded.events` is then empty. Every function here is
pure and safe to call from any thread.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn
from urllib.parse import parse_qsl

__all__ = [
    "BATCH_BODY_LIMIT",
    "BATCH_ROUTES",
    "EVENT_BODY_LIMIT",
    "EVENT_ROUTES",
    "MAX_EVENT_SIZE",
    "MAX_TOKEN_LENGTH",
    "READINESS_ROUTE",
    "Decoded",
    "ValidEvent",
    "decode_request",
    "route_limit",
]

BATCH_ROUTES: Final = frozenset({"/batch", "/batch/"})
EVENT_ROUTES: Final = frozenset(
    {"/e", "/e/", "/i/v0/e", "/i/v0/e/", "/capture", "/capture/", "/track", "/track/"}
)
READINESS_ROUTE: Final = "/_readiness"
BATCH_BODY_LIMIT: Final = 20 * 1024 * 1024
EVENT_BODY_LIMIT: Final = 2 * 1024 * 1024
MAX_EVENT_SIZE: Final = 1_000_000
MAX_TOKEN_LENGTH: Final = 64
MAX_DISTINCT_ID_LENGTH: Final = 200

FORM_MIME_TYPE: Final = "application/x-www-form-urlencoded"
GZIP_MAGIC: Final = b"\x1f\x8b\x08"
_FORM_PREFIXES: Final = (b"data=", b"ver=", b"_=", b"ip=", b"compression=")
_STRICT_BASE64: Final = re.compile(rb"[A-Za-z0-9+/=]*")
_LOOSE_BASE64: Final = re.compile(r"[A-Za-z0-9+/= ]*")
_CANONICAL_UUID: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_COMPRESSIONS: Final = {
    "gzip": "gzip",
    "gzip-js": "gzip",
    "lz64": "lz64",
    "lz-string": "lz64",
    "base64": "base64",
    "b64": "base64",
}
_QUERY_COMPRESSIONS: Final = {"gzip": "gzip", "gzip-js": "gzip", "lz64": "lz64", "base64": "base64"}


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


# One strict decoder for every request: NaN, Infinity and -Infinity fail like in serde_json.
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def route_limit(path: str) -> int | None:
    """The body size limit of a capture route, or ``None`` when `path` is not one."""
    if path in BATCH_ROUTES:
        return BATCH_BODY_LIMIT
    if path in EVENT_ROUTES:
        return EVENT_BODY_LIMIT
    return None


@dataclass(frozen=True, slots=True)
class ValidEvent:
    """The fields PostHog reads from one valid event."""

    event: str
    distinct_id: str
    properties: dict[str, Any]
    uuid: str | None
    timestamp: str | None
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Decoded:
    """The verdict on one capture request.

    ``status`` is 200 with ``error`` ``None`` and every event in ``events``, or the error status
    with its plain-text message and no ``events``. The other fields carry whatever could be read
    before the request failed.
    """

    status: int
    error: str | None
    events: tuple[ValidEvent, ...] = ()
    raw_events: tuple[dict[str, Any], ...] = ()
    body: Any = None
    token: str | None = None
    decompressed_size: int = 0
    gzipped: bool = False
    sent_at: str | None = None


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _fail(status: int, message: str) -> NoReturn:
    raise _Reject(status, message)


class _Progress:
    """What was learnt about the request before it failed (for the record)."""

    __slots__ = ("body", "raw_events", "token", "decompressed_size", "gzipped", "sent_at")

    def __init__(self) -> None:
        self.body: Any = None
        self.raw_events: tuple[dict[str, Any], ...] = ()
        self.token: str | None = None
        self.decompressed_size = 0
        self.gzipped = False
        self.sent_at: str | None = None


def decode_request(
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    limit: int,
    api_keys: frozenset[str] | None = None,
) -> Decoded:
    """Decode and validate one capture request, as PostHog's capture service does.

    Args:
        query: The raw query string (without ``?``).
        headers: The request headers; ``Content-Type`` and ``Content-Encoding`` are read
            (looked up as ``content-type``/``Content-Type``).
        body: The request body as received.
        limit: The route's size limit, applied to the decompressed payload.
        api_keys: When not ``None``, tokens outside this set are refused with 401 (a test-server
            extra: real PostHog answers 200 and drops the events).

    Returns:
        The verdict; never raises for bad input.
    """
    progress = _Progress()
    try:
        return _decode(query, headers, body, limit, api_keys, progress)
    except _Reject as reject:
        return Decoded(
            status=reject.status,
            error=reject.message,
            raw_events=progress.raw_events,
            body=progress.body,
            token=progress.token,
            decompressed_size=progress.decompressed_size,
            gzipped=progress.gzipped,
            sent_at=progress.sent_at,
        )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.title())
    return value


def _decode(
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    limit: int,
    api_keys: frozenset[str] | None,
    progress: _Progress,
) -> Decoded:
    payload, compression = _extract_payload(query, headers, body)
    data, gzipped = _decompress(payload, compression, limit)
    progress.gzipped = gzipped
    progress.decompressed_size = len(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        _fail(400, f"failed to decode request: invalid body encoding: {exc.reason}")
    try:
        parsed = _DECODER.decode(text)
    except ValueError as exc:  # json.JSONDecodeError, or a NaN/Infinity token
        _fail(400, f"failed to parse request: {exc}")
    progress.body = parsed
    raw_events, batch_token, sent_at = _hydrate(parsed, progress)
    progress.sent_at = sent_at
    if not raw_events:
        _fail(400, "request holds no event")
    token = _extract_token(raw_events, batch_token)
    progress.token = token
    _validate_token(token)
    if api_keys is not None and token not in api_keys:
        _fail(
            401,
            "API key is not valid: not in this test server's api_keys allow-list "
            "(real PostHog answers 200 and drops the events of an unknown key)",
        )
    events = tuple(_process_event(raw, index) for index, raw in enumerate(raw_events))
    if len(data) > MAX_EVENT_SIZE:
        _check_event_sizes(raw_events)
    return Decoded(
        status=200,
        error=None,
        events=events,
        raw_events=raw_events,
        body=parsed,
        token=token,
        decompressed_size=len(data),
        gzipped=gzipped,
        sent_at=sent_at,
    )


def _query_value(query: str, name: str) -> str | None:
    if not query or name not in query:
        return None
    try:
        pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        _fail(400, "failed to decode request: invalid query string")
    for key, value in pairs:
        if key == name:
            return value
    return None


def _extract_payload(
    query: str, headers: Mapping[str, str], body: bytes
) -> tuple[bytes, str | None]:
    data = _query_value(query, "data")
    if data:
        raw = data.encode("utf-8")
    elif body:
        raw = body
    else:
        _fail(400, "request missing data payload")

    # Optimistic base64 of the whole payload (JSON and gzip never look like base64).
    if not raw.startswith(_FORM_PREFIXES) and _looks_base64(raw):
        try:
            raw = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            pass

    form: dict[str, str] = {}
    if (_header(headers, "content-type") or "") == FORM_MIME_TYPE:
        if not raw.startswith(_FORM_PREFIXES):
            _fail(400, "failed to decode request: expected form data in POST request payload")
        try:
            form = dict(parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict"))
        except (UnicodeDecodeError, ValueError):
            _fail(400, "failed to decode request: invalid urlencoded form data")
        form_data = form.get("data")
        if form_data is not None and form_data and _LOOSE_BASE64.fullmatch(form_data[:128]):
            # A base64 "data" field lost its '+' characters to urldecoding.
            form["data"] = form_data.replace(" ", "+")

    compression = _QUERY_COMPRESSIONS.get(_query_value(query, "compression") or "")
    if compression is None:
        compression = _QUERY_COMPRESSIONS.get(form.get("compression") or "")
    if compression is None:
        compression = _COMPRESSIONS.get((_header(headers, "content-encoding") or "").strip())

    if "data" in form:
        raw = form["data"].encode("utf-8")
    return raw, compression


def _looks_base64(payload: bytes) -> bool:
    prefix = payload[:128]
    return bool(payload) and len(payload) % 4 == 0 and _STRICT_BASE64.fullmatch(prefix) is not None


def _decompress(payload: bytes, compression: str | None, limit: int) -> tuple[bytes, bool]:
    if compression == "lz64":
        _fail(400, "failed to decode request: lz64 compression is not supported here")
    if compression == "base64":
        try:
            payload = base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError):
            _fail(400, "failed to decode request: attempting to decode base64")
    if compression == "gzip" or payload.startswith(GZIP_MAGIC):
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            data = decompressor.decompress(payload, limit + 1)
        except zlib.error:
            _fail(400, "failed to decode request: invalid gzip data")
        if len(data) > limit:
            _fail(
                413,
                f"maximum event size exceeded: decompressed payload over this route's "
                f"{limit} byte limit",
            )
        if not decompressor.eof:
            _fail(400, "failed to decode request: invalid gzip data (truncated)")
        return data, True
    if len(payload) > limit:
        _fail(413, f"maximum event size exceeded: payload over this route's {limit} byte limit")
    return payload, False


def _hydrate(
    parsed: Any, progress: _Progress
) -> tuple[tuple[dict[str, Any], ...], str | None, str | None]:
    """Split the JSON into events, the batch token and sent_at, checking their types."""
    batch_token: str | None = None
    sent_at: str | None = None
    if isinstance(parsed, dict) and "batch" in parsed:
        batch = parsed["batch"]
        if not isinstance(batch, list):
            _hydration_error("`batch` is not a list of events")
        for name in ("api_key", "token"):
            value = parsed.get(name)
            if value is not None and not isinstance(value, str):
                _hydration_error(f"`{name}` is not a string")
        batch_token = parsed.get("api_key")
        if batch_token is None:
            batch_token = parsed.get("token")
        sent = parsed.get("sent_at")
        if sent is not None and not isinstance(sent, str):
            _hydration_error("`sent_at` is not a string")
        sent_at = sent
        migration = parsed.get("historical_migration")
        if migration is not None and not isinstance(migration, bool):
            _hydration_error("`historical_migration` is not a boolean")
        items: list[Any] = batch
    elif isinstance(parsed, list):
        items = parsed
    elif isinstance(parsed, dict):
        items = [parsed]
    else:
        _hydration_error(f"expected a batch, an event or a list of events, got {_kind(parsed)}")

    raw_events = tuple(item for item in items if isinstance(item, dict))
    progress.raw_events = raw_events
    if len(raw_events) != len(items):
        index = next(i for i, item in enumerate(items) if not isinstance(item, dict))
        _hydration_error(f"event {index}: expected an object, got {_kind(items[index])}")
    for index, raw in enumerate(raw_events):
        _check_event_types(raw, index)
    return raw_events, batch_token, sent_at


def _check_event_types(raw: dict[str, Any], index: int) -> None:
    event = raw.get("event")
    if not isinstance(event, str):
        if event is None:
            _hydration_error(f"event {index}: missing field `event`")
        _hydration_error(f"event {index}: `event` is not a string")
    properties = raw.get("properties", _ABSENT)
    if properties is not _ABSENT and not isinstance(properties, dict):
        _hydration_error(f"event {index}: `properties` is not an object")
    uuid = raw.get("uuid")
    if uuid is not None and not (
        isinstance(uuid, str) and (_CANONICAL_UUID.fullmatch(uuid) or _is_uuid(uuid))
    ):
        _hydration_error(f"event {index}: `uuid` is not a valid UUID: {uuid!r}")
    timestamp = raw.get("timestamp")
    if timestamp is not None and not isinstance(timestamp, str):
        _hydration_error(f"event {index}: `timestamp` is not a string")
    for name in ("token", "api_key", "$token"):
        value = raw.get(name)
        if value is not None and not isinstance(value, str):
            _hydration_error(f"event {index}: `{name}` is not a string")


_ABSENT: Final = object()


def _is_uuid(value: str) -> bool:
    # The forms serde's Uuid accepts besides the canonical one: simple, braced and URN.
    text = value
    if text.startswith("urn:uuid:"):
        text = text[9:]
    elif text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    if len(text) == 32:
        return all(c in "0123456789abcdefABCDEF" for c in text)
    return _CANONICAL_UUID.fullmatch(text) is not None


def _hydration_error(message: str) -> NoReturn:
    _fail(400, f"failed to hydrate events from request: {message}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _event_token(raw: dict[str, Any]) -> str | None:
    for name in ("token", "api_key", "$token"):
        value = raw.get(name)
        if value is not None:
            return value  # type: ignore[no-any-return]  # checked to be a str by _hydrate
    properties = raw.get("properties")
    if isinstance(properties, dict):
        value = properties.get("token")
        if isinstance(value, str):
            return value
    return None


def _extract_token(raw_events: tuple[dict[str, Any], ...], batch_token: str | None) -> str:
    if batch_token is not None:
        return batch_token
    if len(raw_events) == 1:
        token = _event_token(raw_events[0])
        if token is None:
            _fail(401, "event submitted without an api_key")
        return token
    tokens = {t for t in map(_event_token, raw_events) if t is not None}
    if not tokens:
        _fail(401, "event submitted without an api_key")
    if len(tokens) > 1:
        _fail(401, "batch submitted with inconsistent api_key values")
    return tokens.pop()


def _validate_token(token: str) -> None:
    reason = None
    if not token:
        reason = "empty"
    elif len(token.encode("utf-8")) > MAX_TOKEN_LENGTH:
        reason = "too_long"
    elif not token.isascii():
        reason = "not_ascii"
    elif token.startswith("phx_"):
        reason = "personal_api_key"
    elif "\0" in token:
        reason = "null_byte"
    if reason is not None:
        _fail(401, f"API key is not valid: {reason}")


def _process_event(raw: dict[str, Any], index: int) -> ValidEvent:
    name: str = raw["event"]
    if not name:
        _fail(400, "event submitted with an empty event name")
    properties: dict[str, Any] = raw.get("properties") or {}
    value = raw.get("distinct_id")
    if value is None:
        value = properties.get("distinct_id")
        if value is None:
            _fail(400, "event submitted without a distinct_id")
    if isinstance(value, str):
        distinct_id = value
    else:
        distinct_id = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if not distinct_id:
        _fail(400, "event submitted without a distinct_id")
    if "\0" in distinct_id:
        distinct_id = distinct_id.replace("\0", "\ufffd")
    if len(distinct_id) > MAX_DISTINCT_ID_LENGTH:
        distinct_id = distinct_id[:MAX_DISTINCT_ID_LENGTH]
    return ValidEvent(
        event=name,
        distinct_id=distinct_id,
        properties=properties,
        uuid=raw.get("uuid"),
        timestamp=raw.get("timestamp"),
        data=raw,
    )


def _check_event_sizes(raw_events: tuple[dict[str, Any], ...]) -> None:
    for index, raw in enumerate(raw_events):
        size = len(json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        if size > MAX_EVENT_SIZE:
            _fail(
                413,
                f"maximum event size exceeded: event {index} is {size} bytes "
                f"(limit {MAX_EVENT_SIZE})",
            )
