"""analytics_queue: PostHog analytics from WSGI apps without adding latency to requests.

    from analytics_queue import AnalyticsQueue
    analytics = AnalyticsQueue(api_key="phc_...")
    analytics.track("story_generated", distinct_id="user-123", properties={"topic": "cats"})

Or use the default instance, configured from the environment on first use::

    import analytics_queue
    analytics_queue.track("story_generated", distinct_id="user-123")

posthog-python's calls have the same names here: ``set``, ``set_once``, ``alias``,
``group_identify``, and the context functions ``new_context``, ``tag``, ``identify_context`` and
``set_context_session`` (see docs/posthog-parity.md).

The module-level functions are safe to call from any thread.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from analytics_queue._version import __version__
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

if TYPE_CHECKING:
    from analytics_queue._default import (
        alias,
        configure,
        flush,
        get_default,
        get_health,
        get_metrics,
        get_queue_size,
        group_identify,
        set,
        set_once,
        shutdown,
        track,
    )
    from analytics_queue._flushing import flushing
    from analytics_queue._lifecycle import install_sigterm_handler
    from analytics_queue.client import AnalyticsQueue
    from analytics_queue.config import Config
    from analytics_queue.context import (
        get_tags,
        identify_context,
        new_context,
        set_context_session,
        tag,
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
    "alias",
    "configure",
    "flush",
    "flushing",
    "get_default",
    "get_health",
    "get_metrics",
    "get_queue_size",
    "get_tags",
    "group_identify",
    "identify_context",
    "install_sigterm_handler",
    "new_context",
    "set",
    "set_context_session",
    "set_once",
    "shutdown",
    "tag",
    "track",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())

# Loaded on first use (PEP 562): ``import analytics_queue`` stays a few milliseconds, so that
# importing it (or its pytest plugin) costs an app or a test run almost nothing. The first use
# of one of these names loads the client and the worker.
_LAZY: dict[str, str] = {
    "AnalyticsQueue": "analytics_queue.client",
    "Config": "analytics_queue.config",
    "Health": "analytics_queue.metrics",
    "Metrics": "analytics_queue.metrics",
    "flushing": "analytics_queue._flushing",
    "install_sigterm_handler": "analytics_queue._lifecycle",
    **dict.fromkeys(
        ("get_tags", "identify_context", "new_context", "set_context_session", "tag"),
        "analytics_queue.context",
    ),
    **dict.fromkeys(
        (
            "alias",
            "configure",
            "flush",
            "get_default",
            "get_health",
            "get_metrics",
            "get_queue_size",
            "group_identify",
            "set",
            "set_once",
            "shutdown",
            "track",
        ),
        "analytics_queue._default",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute read
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
