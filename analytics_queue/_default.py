"""The default instance and the module-level functions that use it (``analytics_queue.track``).

The default instance is built from the environment on first use, or by :func:`configure`.
Called from inside the library on the same thread (a logging or signal handler), the functions
reach it without a lock, so that it counts the call as ``reentrant`` instead of waiting.

Safe to call from any thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from analytics_queue._guard import guarded, inside
from analytics_queue.client import AnalyticsQueue
from analytics_queue.errors import ShutdownError
from analytics_queue.metrics import Health, Metrics

_default: AnalyticsQueue | None = None
_default_lock = threading.Lock()
_default_lock_pid = os.getpid()


def _lock() -> threading.Lock:
    """The default instance's lock; a new one in a child forked without Python's hooks."""
    global _default_lock, _default_lock_pid
    if _default_lock_pid != os.getpid():
        _default_lock, _default_lock_pid = threading.Lock(), os.getpid()
    return _default_lock


def _reached() -> AnalyticsQueue | None:
    """The default instance, without a lock when re-entered inside the library on this thread
    (a logging handler, a signal handler): then it counts the call as ``reentrant``."""
    return _default if inside.active else get_default()


def get_default() -> AnalyticsQueue:
    """The default instance, built from the environment on first use."""
    global _default
    instance = _default
    if instance is None:
        with guarded(), _lock():
            if _default is None:
                _default = AnalyticsQueue()
            instance = _default
    return instance


def configure(**options: Any) -> AnalyticsQueue:
    """Replace the default instance with one built from ``options`` (and the environment).

    The previous default instance is shut down (its events are flushed first); a module-level
    ``track()`` that raced the replacement goes to the new instance.

    Raises:
        ConfigurationError: an option is bad; the previous instance then stays in place.
    """
    global _default
    instance = AnalyticsQueue(**options)
    with guarded(), _lock():
        previous, _default = _default, instance
    if previous is not None:
        previous.shutdown()
    return instance


def track(
    event: str,
    *,
    distinct_id: Any = None,
    properties: Mapping[str, Any] | None = None,
    timestamp: Any = None,
    uuid: Any = None,
    groups: Mapping[str, Any] | None = None,
    disable_geoip: bool | None = None,
) -> bool:
    """``track()`` on the default instance."""
    call: dict[str, Any] = {
        "distinct_id": distinct_id,
        "properties": properties,
        "timestamp": timestamp,
        "uuid": uuid,
        "groups": groups,
        "disable_geoip": disable_geoip,
    }
    instance = _reached()
    if instance is None:
        return False
    try:
        if instance.track(event, **call):
            return True
    except ShutdownError:  # strict mode
        if instance is _default:
            raise
    if not instance.closed or instance is _default:
        return False
    # configure() replaced and closed the default instance while this call used it.
    return get_default().track(event, **call)


def set(  # noqa: A001 - posthog-python's name
    *,
    distinct_id: Any = None,
    properties: Mapping[str, Any] | None = None,
    timestamp: Any = None,
    uuid: Any = None,
    disable_geoip: bool | None = None,
) -> bool:
    """``set()`` on the default instance: a ``$set`` event."""
    instance = _reached()
    return (
        False
        if instance is None
        else instance.set(
            distinct_id=distinct_id,
            properties=properties,
            timestamp=timestamp,
            uuid=uuid,
            disable_geoip=disable_geoip,
        )
    )


def set_once(
    *,
    distinct_id: Any = None,
    properties: Mapping[str, Any] | None = None,
    timestamp: Any = None,
    uuid: Any = None,
    disable_geoip: bool | None = None,
) -> bool:
    """``set_once()`` on the default instance: a ``$set_once`` event."""
    instance = _reached()
    return (
        False
        if instance is None
        else instance.set_once(
            distinct_id=distinct_id,
            properties=properties,
            timestamp=timestamp,
            uuid=uuid,
            disable_geoip=disable_geoip,
        )
    )


def alias(
    previous_id: Any,
    distinct_id: Any = None,
    timestamp: Any = None,
    uuid: Any = None,
    disable_geoip: bool | None = None,
) -> bool:
    """``alias()`` on the default instance: a ``$create_alias`` event."""
    instance = _reached()
    return (
        False
        if instance is None
        else instance.alias(previous_id, distinct_id, timestamp, uuid, disable_geoip)
    )


def group_identify(
    group_type: str,
    group_key: Any,
    properties: Mapping[str, Any] | None = None,
    timestamp: Any = None,
    uuid: Any = None,
    disable_geoip: bool | None = None,
    distinct_id: Any = None,
) -> bool:
    """``group_identify()`` on the default instance: a ``$groupidentify`` event."""
    instance = _reached()
    return (
        False
        if instance is None
        else instance.group_identify(
            group_type, group_key, properties, timestamp, uuid, disable_geoip, distinct_id
        )
    )


def flush(timeout: float | None = None) -> bool:
    """``flush()`` on the default instance."""
    instance = _reached()
    return False if instance is None else instance.flush(timeout)


def shutdown(timeout: float | None = None) -> bool:
    """``shutdown()`` on the default instance."""
    instance = _reached()
    return False if instance is None else instance.shutdown(timeout)


def get_queue_size() -> int:
    """``queue_size`` of the default instance."""
    return get_default().queue_size


def get_metrics() -> Metrics:
    """``metrics()`` of the default instance."""
    return get_default().metrics()


def get_health() -> Health:
    """``health()`` of the default instance."""
    return get_default().health()


def peek() -> AnalyticsQueue | None:
    """The default instance if one was built; never builds one."""
    return _default
