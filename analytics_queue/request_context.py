"""The per-request context of the Flask and Django integrations, framework-neutral.

A request opens a fresh scope (see :mod:`analytics_queue.context`) tagged with the names
posthog-python's integrations use: ``$current_url`` (without the query string, which often
carries tokens), ``$request_method``, ``$request_path``, ``$user_agent`` and
``$raw_user_agent``; ``$session_id`` from the ``X-POSTHOG-SESSION-ID`` header; the distinct id
from ``X-POSTHOG-DISTINCT-ID``, else the one the framework gives (Django's authenticated user);
``$ip`` only when ``request_context_ip`` is on, as it is personal data.

Thread safety: each request's scope lives in its own context (thread or task).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import Token
from dataclasses import dataclass
from typing import Final

from analytics_queue.context import Scope, _current

SESSION_HEADER: Final = "X-POSTHOG-SESSION-ID"
DISTINCT_ID_HEADER: Final = "X-POSTHOG-DISTINCT-ID"
#: Longer header values are ignored: an id is short, and the header is client input.
MAX_HEADER_ID: Final = 200


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What a request tells about itself; None where it says nothing."""

    url: str | None
    method: str | None
    path: str | None
    user_agent: str | None
    ip: str | None
    header: Callable[[str], str | None]


def open_scope(
    info: RequestInfo,
    *,
    with_ip: bool,
    fallback_distinct_id: Callable[[], str | None] | None = None,
) -> Token[Scope | None]:
    """Enter a fresh scope for one request; give the token to :func:`close_scope`.

    Args:
        fallback_distinct_id: called only when the distinct id header gives none (it may
            look the user up).
    """
    scope = Scope(None, fresh=True)
    tags = scope.tags
    if info.url:
        tags["$current_url"] = info.url
    if info.method:
        tags["$request_method"] = info.method
    if info.path:
        tags["$request_path"] = info.path
    if info.user_agent:
        tags["$user_agent"] = info.user_agent
        tags["$raw_user_agent"] = info.user_agent
    if with_ip and info.ip:
        tags["$ip"] = info.ip
    scope.session_id = _header_id(info.header(SESSION_HEADER))
    scope.distinct_id = _header_id(info.header(DISTINCT_ID_HEADER))
    if scope.distinct_id is None and fallback_distinct_id is not None:
        scope.distinct_id = fallback_distinct_id()
    return _current.set(scope)


def close_scope(token: Token[Scope | None]) -> None:
    """Leave the scope :func:`open_scope` entered (no-op when already left)."""
    try:
        _current.reset(token)
    except (ValueError, RuntimeError):  # another context's token, or used: nothing to undo
        pass


def _header_id(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > MAX_HEADER_ID:
        return None
    return value
