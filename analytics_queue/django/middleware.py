"""The request context of the Django app: each request runs in a fresh analytics context.

The app adds this middleware at the end of ``MIDDLEWARE`` when it is not listed (after
``AuthenticationMiddleware``, so that ``request.user`` is known); list it yourself to choose its
place. Each request's scope is tagged with ``$current_url`` (no query string),
``$request_method``, ``$request_path`` and ``$user_agent``; ``$session_id`` comes from the
``X-POSTHOG-SESSION-ID`` header and the distinct id from ``X-POSTHOG-DISTINCT-ID``, else from the
authenticated user's primary key. ``$ip`` (``X-Forwarded-For``, else ``REMOTE_ADDR``) only with
``request_context_ip``. Off with ``ANALYTICS_QUEUE_REQUEST_CONTEXT = False`` (or
``ANALYTICS_QUEUE = {"request_context": False}``, or the environment variable of that name).

Synchronous: Django runs it around async views through its adapter. Safe to share between
threads: each request's scope lives in its own context.
"""

# Django ships no type information: its names are Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import analytics_queue
from analytics_queue.request_context import RequestInfo, close_scope, open_scope

#: Its dotted path, as listed in ``MIDDLEWARE``.
MIDDLEWARE_PATH: Final = "analytics_queue.django.middleware.RequestContextMiddleware"


class RequestContextMiddleware:
    """Opens an analytics context per request (see the module docstring)."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        config = analytics_queue.get_default().config
        if not config.request_context:
            return self.get_response(request)
        header = request.headers.get
        info = RequestInfo(
            url=request.build_absolute_uri(request.path),
            method=request.method,
            path=request.path,
            user_agent=header("User-Agent"),
            ip=_client_ip(request),
            header=header,
        )
        token = open_scope(
            info,
            with_ip=config.request_context_ip,
            fallback_distinct_id=lambda: _user_id(request),
        )
        try:
            return self.get_response(request)
        finally:
            close_scope(token)


def _user_id(request: Any) -> str | None:
    """The authenticated user's primary key, as posthog-python's middleware reads it."""
    user = getattr(request, "user", None)
    if user is None:
        return None
    authenticated = getattr(user, "is_authenticated", False)
    if callable(authenticated):
        authenticated = authenticated()
    if not authenticated:
        return None
    pk = getattr(user, "pk", None)
    return None if pk is None else str(pk)


def _client_ip(request: Any) -> str | None:
    forwarded = request.headers.get("X-Forwarded-For")
    if forwarded:
        return str(forwarded).split(",")[0].strip() or None
    address = request.META.get("REMOTE_ADDR")
    return str(address) if address else None
