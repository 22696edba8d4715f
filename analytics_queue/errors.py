"""The exceptions analytics_queue raises.

Only configuration errors and, with ``strict=True``, refusals from ``track()`` ever raise;
everything else is counted in the metrics instead.

    AnalyticsQueueError
    ├── ConfigurationError (ValueError)      a bad explicit option, raised by the constructor
    └── RefusedError                          track() refused an event (strict mode only)
        ├── InvalidEventError (ValueError)    reason "invalid": bad name, id, timestamp, NaN, ...
        ├── UnserializableError (TypeError)   reason "invalid": a value JSON cannot carry
        ├── OversizeError (ValueError)        reason "oversize": over the per-event limit
        ├── QueueFullError (RuntimeError)     reason "queue_full"
        └── ShutdownError (RuntimeError)      reason "shutdown"
"""

from __future__ import annotations


class AnalyticsQueueError(Exception):
    """Base class of every exception analytics_queue raises."""


class ConfigurationError(AnalyticsQueueError, ValueError):
    """An explicit option has a bad value; raised at construction, never later."""


class RefusedError(AnalyticsQueueError):
    """``track()`` refused an event; raised only when ``strict=True``.

    Attributes:
        reason: the refusal reason counted in the metrics (``invalid``, ``oversize``, ...).
    """

    reason = "invalid"


class InvalidEventError(RefusedError, ValueError):
    """The event name, distinct id, timestamp, uuid or a property value is not acceptable."""


class UnserializableError(RefusedError, TypeError):
    """A property value has a type that cannot be converted to JSON."""


class OversizeError(RefusedError, ValueError):
    """The serialized event is over the per-event size limit."""

    reason = "oversize"


class QueueFullError(RefusedError, RuntimeError):
    """The queue holds ``max_queue_size`` events already."""

    reason = "queue_full"


class ShutdownError(RefusedError, RuntimeError):
    """The queue was shut down; it accepts no more events."""

    reason = "shutdown"
