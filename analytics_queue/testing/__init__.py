"""A local PostHog-compatible capture server, for testing code that sends analytics.

`CaptureServer` is a real HTTP server on 127.0.0.1 that answers like PostHog's capture service
(the Rust ``capture`` crate) and records what it receives::

    from analytics_queue.testing import CaptureServer

    with CaptureServer() as server:
        client = posthog.Posthog("phc_test", host=server.url)
        client.capture("signup", distinct_id="user-1")
        client.flush()
        [event] = server.wait_for(1)
        assert event.event == "signup" and event.distinct_id == "user-1"

What it accepts and refuses (PostHog's rules):

- ``POST``/``GET`` ``/batch`` and ``/batch/`` (20 MiB body limit); ``/e``, ``/i/v0/e``,
  ``/capture``, ``/track``, with or without a trailing slash (2 MiB); ``GET /_readiness`` → 200;
  any other path → 404; another method on a capture route → 405.
- The payload is the body or a non-empty ``?data=`` value, gunzipped on ``Content-Encoding:
  gzip``, ``?compression=gzip|gzip-js`` or the gzip magic bytes.
- 400: empty payload, bad gzip, not UTF-8, not JSON (strict: ``NaN``/``Infinity`` fail), not a
  batch or an event, ``"batch": []``, an event without a non-empty ``event`` or without a
  ``distinct_id`` (top level or ``properties.distinct_id``; null is missing), ``properties``
  not an object, an invalid ``uuid``.
- 401: no token (the batch's ``api_key``/``token``, or the events' ``token``/``api_key``/
  ``properties.token``), or one that is empty, over 64 bytes, non-ASCII, holds a NUL or starts
  with ``phx_`` (a personal key); events of one request with different tokens.
- 413: body over the route limit, payload over it once decompressed, or one event over
  1,000,000 bytes (``maximum event size exceeded``).
- 200 ``{"status":"Ok"}`` (JSON) on success; error bodies are plain text. A request with any
  invalid event ingests nothing.

Differences from real PostHog, on purpose or not:

- ``api_keys=`` makes unknown keys a 401; real PostHog answers 200 and drops their events.
- Without faults, a request is all-or-nothing; real PostHog produces events one by one, so a
  batch failing part-way (e.g. 413 on its 7th event) may have ingested the first ones. Use
  `CaptureServer.accept_then_fail` to reproduce that.
- A missing ``uuid`` stays ``None`` (PostHog assigns a UUIDv7); timestamps are not
  interpreted; ``lz64`` compression (old posthog-js) is refused with 400; PostHog's capture-v1
  protocol (``/i/v1/...``, posthog-python's opt-in ``capture_mode="v1"``) is not served.

Fault injection (`fail_with`, `delay_responses`, `hang`, `reset_connections`,
`accept_then_fail`, `down`/`up`) scripts the next N requests or lasts until `clear_faults`.

The ``capture_server`` pytest fixture (`analytics_queue.testing.plugin`) gives each test a fresh
server; ``python -m analytics_queue.testing`` runs one standalone.

Thread safety: `CaptureServer` is safe to share between threads; `CapturedEvent` and
`CapturedRequest` are immutable.

This package needs only the standard library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._records import CapturedEvent, CapturedRequest
    from ._server import CaptureServer

__all__ = ["CaptureServer", "CapturedEvent", "CapturedRequest"]

# Loaded on first use (PEP 562), so that the pytest plugin, a submodule of this package, can be
# imported without the server.
_LAZY = {"CaptureServer": "._server", "CapturedEvent": "._records", "CapturedRequest": "._records"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
