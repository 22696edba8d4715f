"""The ``before_send`` hook: the user's last look at an event, on the worker thread.

The hook receives the batch element as a dict (``event``, ``distinct_id``, ``properties``,
``timestamp``, ``uuid``, and ``$set``/``$set_once`` for person events), fully enriched, and
returns it (changed or not) or None to drop it. It runs where the event is serialized, on the
worker thread, never on the thread that called ``track()``.

- None: the event fails with reason ``before_send`` (counted, not logged).
- An exception, or a result that is not a valid event: the event fails with reason
  ``before_send_error`` and is never sent, since it may not have been scrubbed. The first such
  failure is logged at WARNING (the exception's type, not the event); every one at DEBUG.

Thread safety: one ``BeforeSend`` is called by one worker at a time; its "logged once" flag is
a plain attribute, at worst logged twice.
"""

from __future__ import annotations

import logging
import uuid as uuid_module
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from analytics_queue.errors import RefusedError
from analytics_queue.event import QueuedEvent, Refusal, convert_value

if TYPE_CHECKING:
    from analytics_queue.event import EventEncoder

logger = logging.getLogger(__name__)


class BeforeSendDropped(RefusedError):
    """``before_send`` returned None: the event is dropped on purpose."""

    reason = "before_send"


class BeforeSendFailed(RefusedError):
    """``before_send`` raised, or returned something that is not an event."""

    reason = "before_send_error"


class BeforeSend:
    """Wraps the user's hook: runs it on one event and turns its answer into JSON bytes.

    Args:
        hook: ``callable(event: dict) -> dict | None``.
    """

    __slots__ = ("_hook", "_logged")

    def __init__(self, hook: Callable[[dict[str, Any]], Any]) -> None:
        self._hook = hook
        self._logged = False

    def run(self, encoder: EventEncoder, item: QueuedEvent) -> bytes:
        """The JSON bytes of ``item`` after the hook.

        Raises:
            BeforeSendDropped: the hook returned None.
            BeforeSendFailed: the hook raised, or returned something that cannot be sent.
            InvalidEventError: the changed event cannot be serialized.
        """
        # A copy of every container: tag values and $context_tags are shared by the events of
        # one context, and a hook that changes them in place must change only this event.
        element: dict[str, Any] = convert_value(encoder.to_dict(item), ())[0]
        try:
            result = self._hook(element)
        except Exception as exc:
            self._failed(item.event, f"before_send raised {type(exc).__name__}", exc)
        if result is None:
            raise BeforeSendDropped(f"event {item.event!r}: dropped by before_send")
        try:
            checked = _check_element(result, encoder.uuid_of(item))
        except (Refusal, ValueError, TypeError, RecursionError) as exc:
            message = exc.message if isinstance(exc, Refusal) else str(exc)
            self._failed(item.event, f"before_send returned a bad event: {message}", None)
        return encoder.dumps_element(item.event, checked)

    def _failed(self, event: str, message: str, exc: BaseException | None) -> NoReturn:
        if not self._logged:
            self._logged = True
            logger.warning(
                "%s; the event is dropped, never sent unscrubbed (reported once; every "
                "failure is counted as before_send_error and logged at DEBUG)",
                message,
            )
        logger.debug("before_send failed on event %r: %s", event, message, exc_info=exc)
        raise BeforeSendFailed(f"event {event!r}: {message}") from None


def _check_element(result: object, fallback_uuid: str) -> dict[str, Any]:
    """The hook's answer as a JSON-native batch element, or ValueError/TypeError."""
    if not isinstance(result, Mapping):
        raise TypeError(f"expected a dict or None, got {type(result).__name__}")
    converted, _ = convert_value(result, ())
    element: dict[str, Any] = converted
    event = element.get("event")
    if not isinstance(event, str) or not event:
        raise ValueError("'event' must be a non-empty str")
    distinct_id = element.get("distinct_id")
    if isinstance(distinct_id, int) and not isinstance(distinct_id, bool):
        element["distinct_id"] = distinct_id = str(distinct_id)
    if not isinstance(distinct_id, str) or not distinct_id:
        raise ValueError("'distinct_id' must be a non-empty str")
    properties = element.setdefault("properties", {})
    if not isinstance(properties, dict):
        raise TypeError("'properties' must be a dict")
    event_id = element.get("uuid")
    if event_id is None:
        element["uuid"] = fallback_uuid
    else:
        element["uuid"] = str(uuid_module.UUID(str(event_id)))  # ValueError when not a UUID
    timestamp = element.get("timestamp")
    if timestamp is not None and not isinstance(timestamp, str):
        raise TypeError("'timestamp' must be an ISO-8601 str or a datetime")
    return element
