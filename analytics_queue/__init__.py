"""analytics_queue: PostHog analytics from WSGI apps without adding latency to requests.

    from analytics_queue import AnalyticsQueue
    analytics = AnalyticsQueue(api_key="phc_...")
    analytics.track("story_generated", distinct_id="user-123", properties={"topic": "cats"})

Or use the default instance, configured from the environment on first use::

    import analytics_queue
    analytics_queue.track("story_generated", distinct_id="user-123")

The module-level functions are safe to call from any thread.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from analytics_queue._flushing import flushing
from analytics_queue._lifecycle import install_sigterm_handler
from analytics_queue._version import __version__
from analytics_queue._worker import reentry
from analytics_queue.client import AnalyticsQueue
from analytics_queue.config import Config
from analytics_queue.errors import (
    AnalyticsQueueError,
    ConfigurationError,
    InvalidEventError,
    OversizeError,
    QueueFullError,
    RefusedError,
    ShutdownError,
    UnserializableError,
)
from analytics_queue.metrics import Health, Metrics

__all__ = [
    "AnalyticsQueue",
    "AnalyticsQueueError",
    "Config",
    "ConfigurationError",
    "Health",
    "InvalidEventError",
    "Metrics",
    "OversizeError",
    "QueueFullError",
    "RefusedError",
    "ShutdownError",
    "UnserializableError",
    "__version__",
    "configure",
    "flush",
    "flushing",
    "get_default",
    "get_health",
    "get_metrics",
    "get_queue_size",
    "install_sigterm_handler",
    "shutdown",
    "track",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())

_default: AnalyticsQueue | None = None
_default_lock = threading.Lock()


def _reset_default_lock() -> None:
    global _default_lock
    _default_lock = threading.Lock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_default_lock)


def get_default() -> AnalyticsQueue:
    """The default instance, built from the environment on first use."""
    global _default
    instance = _default
    if instance is None:
        with _default_lock:
            if _default is None:
                _default = AnalyticsQueue()
            instance = _default
    return instance


def configure(**options: Any) -> AnalyticsQueue:
    """Replace the default instance with one built from ``options`` (and the environment).

    The previous default instance is shut down (its events are flushed first).

    Raises:
        ConfigurationError: an option is bad; the previous instance then stays in place.
    """
    global _default
    instance = AnalyticsQueue(**options)
    with _default_lock:
        previous, _default = _default, instance
    if previous is not None:
        previous.shutdown()
    return instance


def track(
    event: str,
    *,
    distinct_id: Any,
    properties: Mapping[str, Any] | None = None,
    timestamp: Any = None,
    uuid: Any = None,
) -> bool:
    """``track()`` on the default instance."""
    if reentry.active:  # a logging handler fed by our own log lines, maybe mid-construction
        return False
    return get_default().track(
        event, distinct_id=distinct_id, properties=properties, timestamp=timestamp, uuid=uuid
    )


def flush(timeout: float | None = None) -> bool:
    """``flush()`` on the default instance."""
    return get_default().flush(timeout)


def shutdown(timeout: float | None = None) -> bool:
    """``shutdown()`` on the default instance."""
    return get_default().shutdown(timeout)


def get_queue_size() -> int:
    """``queue_size`` of the default instance."""
    return get_default().queue_size


def get_metrics() -> Metrics:
    """``metrics()`` of the default instance."""
    return get_default().metrics()


def get_health() -> Health:
    """``health()`` of the default instance."""
    return get_default().health()
