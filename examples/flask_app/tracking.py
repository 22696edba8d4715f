"""The three analytics modes the demo compares: ``async``, ``blocking`` and ``off``.

- ``async``: ``analytics_queue`` — ``track()`` puts the event on a queue and returns; a worker
  thread sends it later, in a batch.
- ``blocking``: the pattern this library replaces — one synchronous HTTP request to PostHog per
  event, on the request thread, through posthog-python's ``Posthog(..., sync_mode=True)``.
- ``off``: no analytics at all, the baseline.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any, Final

from analytics_queue.flask import FlaskAnalytics

logger = logging.getLogger(__name__)

MODES: Final = ("async", "blocking", "off")

#: What each mode uses, for people.
MODE_LABELS: Final = {
    "async": "analytics_queue",
    "blocking": "posthog-python, sync_mode=True",
    "off": "no analytics (the baseline)",
}

#: Where the BlockingSender of an app is kept, in ``app.extensions``.
BLOCKING_KEY: Final = "story_demo_blocking"

#: The extension for the ``async`` mode: one per module, ``init_app`` per app.
analytics = FlaskAnalytics()


class BlockingSender:
    """posthog-python in ``sync_mode``: each ``capture()`` is one HTTP request, awaited.

    The client is created lazily, in the process that first uses it (so a gunicorn
    ``--preload`` master never holds one). Safe to share between threads.
    """

    def __init__(self, api_key: str | None, host: str, timeout: float) -> None:
        self._api_key = api_key
        self._host = host
        self._timeout = timeout
        self._lock = threading.Lock()
        self._client: Any = None

    def _get_client(self, api_key: str) -> Any:
        with self._lock:
            if self._client is None:
                from posthog import Posthog

                self._client = Posthog(
                    api_key,
                    host=self._host,
                    sync_mode=True,
                    timeout=self._timeout,
                    max_retries=0,
                )
            return self._client

    def capture(self, event: str, *, distinct_id: str, properties: Mapping[str, Any]) -> bool:
        """Send one event and wait for PostHog's answer; True when it was accepted."""
        api_key = self._api_key
        if api_key is None:
            # Local mode, like analytics_queue without a key: nothing to wait for.
            logger.info("blocking (no API key): %s", json.dumps({"event": event, **properties}))
            return True
        try:
            # posthog-python logs a failed send and returns None instead of the event's uuid.
            sent = self._get_client(api_key).capture(
                event, distinct_id=distinct_id, properties=dict(properties)
            )
        except Exception:  # raised only with posthog's debug=True
            logger.exception("blocking capture of %r failed", event)
            return False
        return sent is not None

    def shutdown(self) -> None:
        """Release the posthog-python client, if one was made."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.shutdown()


def track(
    mode: str,
    blocking: BlockingSender,
    event: str,
    *,
    distinct_id: str,
    properties: Mapping[str, Any],
) -> bool:
    """Track one event the way ``mode`` says; returns whether it was queued or sent."""
    if mode == "async":
        return analytics.track(event, distinct_id=distinct_id, properties=properties)
    if mode == "blocking":
        return blocking.capture(event, distinct_id=distinct_id, properties=properties)
    return False
