"""What each call puts on the queue: identity, context, groups and person/group events.

posthog-python's rules, call by call:

- ``track()``: the context's tags go under the caller's properties (``$context_tags`` lists
  their names), the context's session id becomes ``$session_id`` unless set; the distinct id is
  the one passed, else the context's, else a random UUID for a *personless* event
  (``$process_person_profile: false`` unless set); ``groups`` becomes ``$groups``.
- ``set()``/``set_once()``: a ``$set``/``$set_once`` event with the person properties (and the
  context's tags) at the top level; nothing without a distinct id or without properties.
- ``alias()``: a ``$create_alias`` event sent as ``previous_id`` with ``alias`` = the new id.
- ``group_identify()``: a ``$groupidentify`` event with ``$group_type``, ``$group_key`` and
  ``$group_set``; its distinct id is the one passed, the context's or a random one.

Pure functions of their arguments and the current context: safe to call from any thread. They
raise :class:`~analytics_queue.errors.RefusedError` subclasses for bad input.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any, Final

from analytics_queue.context import Scope, current_scope
from analytics_queue.errors import InvalidEventError
from analytics_queue.event import (
    EventOptions,
    capture_properties,
    check_distinct_id,
    check_timestamp,
    check_uuid,
    format_uuid4,
)

#: The options of a person or group event, by the call's ``disable_geoip``.
_PERSON_OPTIONS: Final = {
    None: EventOptions(None, False),
    True: EventOptions(True, False),
    False: EventOptions(False, False),
}
#: The options of a ``track()`` event whose ``disable_geoip`` was given.
TRACK_OPTIONS: Final = {True: EventOptions(True, True), False: EventOptions(False, True)}


def explicit_id(event: str, distinct_id: object) -> str | None:
    """The distinct id passed, as a str; None when none was passed (None or "")."""
    if distinct_id is None or (isinstance(distinct_id, str) and not distinct_id):
        return None
    return check_distinct_id(event, distinct_id)


def resolve_track(
    event: str,
    distinct_id: object,
    props: dict[str, Any],
    scope: Scope | None,
    groups: Mapping[str, Any] | None,
    random_bits: Callable[[int], int],
) -> tuple[str, dict[str, Any]]:
    """The slow path of ``track()``: context, personless events and groups.

    Args:
        props: the captured copy of the caller's properties; it may be changed.

    Returns:
        The distinct id and the properties to queue.
    """
    if scope is not None:
        context_props = scope.properties()
        if context_props:
            props = {**context_props, **props}
    chosen = explicit_id(event, distinct_id)
    if chosen is None and scope is not None:
        chosen = scope.distinct_id
    if chosen is None:
        chosen = format_uuid4(random_bits(128))
        props.setdefault("$process_person_profile", False)
    if groups:
        props["$groups"] = check_groups(event, groups)
    return chosen, props


def check_groups(event: str, groups: object) -> dict[str, Any]:
    """``groups`` as a JSON-native dict of group type to group key."""
    if not isinstance(groups, Mapping):
        raise InvalidEventError(
            f"event {event!r}: groups must be a mapping of group type to key, "
            f"got {type(groups).__name__}"
        )
    return capture_properties(event, groups)


def common(
    event: str, timestamp: object, uuid: object, random_bits: Callable[[int], int]
) -> tuple[dt.datetime | None, str | int]:
    """The checked timestamp and the uuid (a random 128-bit int when none was given)."""
    when = None if timestamp is None else check_timestamp(event, timestamp)
    event_id: str | int = random_bits(128) if uuid is None else check_uuid(event, uuid)
    return when, event_id


def person_event(
    kind: str, distinct_id: object, properties: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """(distinct id, top-level members) of a ``$set`` or ``$set_once`` event.

    Raises:
        InvalidEventError: no distinct id (passed or from the context), or no properties.
    """
    props = capture_properties(kind, properties)
    scope = current_scope()
    if scope is not None:
        context_props = scope.properties()
        if context_props:
            props = {**context_props, **props}
    chosen = explicit_id(kind, distinct_id)
    if chosen is None and scope is not None:
        chosen = scope.distinct_id
    if chosen is None:
        raise InvalidEventError(
            f"event {kind!r}: needs a distinct_id (passed, or from identify_context())"
        )
    if not props:
        raise InvalidEventError(f"event {kind!r}: no properties to set")
    return chosen, {kind: props}


def alias_event(previous_id: object, distinct_id: object) -> tuple[str, dict[str, Any]]:
    """(distinct id, properties) of a ``$create_alias`` event.

    Raises:
        InvalidEventError: no previous_id, or no distinct id (passed or from the context).
    """
    previous = explicit_id("$create_alias", previous_id)
    if previous is None:
        raise InvalidEventError("event '$create_alias': needs a previous_id")
    scope = current_scope()
    chosen = explicit_id("$create_alias", distinct_id)
    if chosen is None and scope is not None:
        chosen = scope.distinct_id
    if chosen is None:
        raise InvalidEventError(
            "event '$create_alias': needs a distinct_id (passed, or from identify_context())"
        )
    props: dict[str, Any] = {"distinct_id": previous, "alias": chosen}
    if scope is not None and scope.session_id is not None:
        props["$session_id"] = scope.session_id
    return previous, props


def group_event(
    group_type: object,
    group_key: object,
    properties: Mapping[str, Any] | None,
    distinct_id: object,
    random_bits: Callable[[int], int],
) -> tuple[str, dict[str, Any]]:
    """(distinct id, properties) of a ``$groupidentify`` event.

    Raises:
        InvalidEventError: no group_type or no group_key.
    """
    kind = "$groupidentify"
    if not isinstance(group_type, str) or not group_type:
        raise InvalidEventError(f"event {kind!r}: group_type must be a non-empty str")
    if group_key is None or group_key == "" or isinstance(group_key, bool):
        raise InvalidEventError(f"event {kind!r}: needs a group_key")
    key = capture_properties(kind, {"$group_key": group_key})["$group_key"]
    if isinstance(key, (dict, list)):
        raise InvalidEventError(f"event {kind!r}: group_key must be a str or a number")
    group_set = capture_properties(kind, properties)
    scope = current_scope()
    chosen = explicit_id(kind, distinct_id)
    if chosen is None and scope is not None:
        chosen = scope.distinct_id
    if chosen is None:  # always personful, as in posthog-python: a random id, no flag
        chosen = format_uuid4(random_bits(128))
    props: dict[str, Any] = {
        "$group_type": group_type,
        "$group_key": key,
        "$group_set": group_set,
    }
    if scope is not None and scope.session_id is not None:
        props["$session_id"] = scope.session_id
    return chosen, props


def person_options(disable_geoip: object, top_level: dict[str, Any] | None = None) -> EventOptions:
    """The options of a person or group event for the call's ``disable_geoip``."""
    base = _PERSON_OPTIONS[_geoip(disable_geoip)]
    return base if top_level is None else base._replace(top_level=top_level)


def track_options(disable_geoip: object) -> EventOptions:
    """The options of a ``track()`` event whose call gave ``disable_geoip`` (not None)."""
    return TRACK_OPTIONS[_geoip(disable_geoip) is True]


def _geoip(value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise InvalidEventError(f"disable_geoip must be True, False or None, got {value!r}")
