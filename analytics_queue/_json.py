"""The JSON backend of the worker: orjson when it is installed, else the standard library.

Both give compact UTF-8 JSON bytes with the same meaning for what ``capture_properties`` leaves
in an event (plain dicts and lists of str, int, float, bool and None). Where orjson would differ,
it refuses, and the standard library decides instead, so that the outcome is the same:

- integers beyond 64 bits (orjson refuses them; json writes them exactly);
- lone surrogates (orjson refuses; json's output then fails UTF-8 encoding, as it must);
- keys that are not str, nesting deeper than orjson's limit, str/int/dict/list subclasses,
  datetimes and dataclasses (passed through to json, which writes or refuses them itself).

Floats may be written differently (``1e+16`` by json, ``1e16`` by orjson): the same number.
NaN, infinities, UUIDs and plain enums never reach the encoder: ``capture_properties`` refuses
or converts them on the caller's thread.

``ANALYTICS_QUEUE_JSON=stdlib`` forces the standard library even where orjson is installed (a
test and debugging switch; ``orjson`` insists on orjson and fails at import without it).

Pure functions: safe to call from any thread.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from typing import Any, Final, NamedTuple

logger = logging.getLogger(__name__)

#: The environment variable that picks the backend: ``orjson``, ``stdlib`` or unset (auto).
ENV_VAR: Final = "ANALYTICS_QUEUE_JSON"

_stdlib_text: Final = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False
).encode


def _stdlib_dumps(obj: Any) -> bytes:
    return _stdlib_text(obj).encode("utf-8")


class Backend(NamedTuple):
    """One way to serialize: its name and ``dumps(obj) -> bytes``.

    ``dumps`` raises ``TypeError`` (unserializable), ``ValueError`` (NaN with the standard
    library; ``UnicodeEncodeError``, a ``ValueError``, for a lone surrogate) or ``RecursionError``.
    """

    name: str
    dumps: Callable[[Any], bytes]


STDLIB: Final = Backend("stdlib", _stdlib_dumps)


@functools.cache
def orjson_backend() -> Backend | None:
    """orjson's backend, or None when it is not installed (imported on first use: it costs
    milliseconds that ``import analytics_queue`` should not pay)."""
    try:
        import orjson
    except ImportError:
        return None
    encode = orjson.dumps
    refused = orjson.JSONEncodeError
    options = (
        orjson.OPT_PASSTHROUGH_SUBCLASS
        | orjson.OPT_PASSTHROUGH_DATETIME
        | orjson.OPT_PASSTHROUGH_DATACLASS
    )

    def dumps(obj: Any) -> bytes:
        try:
            return encode(obj, None, options)
        except refused:
            return _stdlib_dumps(obj)

    return Backend("orjson", dumps)


def select(choice: str | None = None) -> Backend:
    """The backend ``choice`` names (default: the environment's, else orjson when installed).

    Raises:
        ValueError: ``choice`` is not ``orjson``, ``stdlib`` or empty; or orjson was asked for
            and is not installed.
    """
    if choice is None:
        choice = os.environ.get(ENV_VAR, "")
    choice = choice.strip().lower()
    orjson = orjson_backend()
    if choice in ("", "auto"):
        return orjson or STDLIB
    if choice == "stdlib":
        return STDLIB
    if choice == "orjson":
        if orjson is None:
            raise ValueError(f"{ENV_VAR}=orjson, but orjson is not installed")
        return orjson
    raise ValueError(f"{ENV_VAR} must be 'orjson' or 'stdlib', got {choice!r}")


@functools.cache
def default() -> Backend:
    """The backend of this process, chosen once (at the first encoder): the one :data:`ENV_VAR`
    names; a bad value is logged and replaced by the automatic choice."""
    try:
        return select()
    except ValueError as exc:
        fallback = orjson_backend() or STDLIB
        logger.warning("%s; using %s", exc, fallback.name)
        return fallback
