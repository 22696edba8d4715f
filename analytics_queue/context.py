"""Context scopes: tags, a distinct id and a session id that apply to every event tracked inside.

posthog-python's names and behaviour: ``new_context()`` opens a scope (a context manager),
``tag(key, value)`` adds a property to every event tracked inside it, ``identify_context(id)``
gives those events a distinct id when ``track()`` is called without one, and
``set_context_session(id)`` gives them ``$session_id``. A nested scope starts with its parent's
tags, distinct id and session id, unless it is opened with ``fresh=True``.

Scopes live in a ``contextvars.ContextVar``: each thread, and each asyncio task (which runs in a
copy of the context it was created in), sees its own scope; a scope opened in one never shows in
another. Outside any scope, ``tag()`` and the others do nothing, as in posthog-python.

A scope copies its parent's state when it opens, and keeps a ready-made property dict for
``track()`` so that an event inside a scope costs one dict merge. Thread safety: a scope belongs
to the thread or task that opened it; the functions here only touch the current one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final

from analytics_queue.errors import RefusedError
from analytics_queue.event import capture_properties, check_distinct_id

logger = logging.getLogger(__name__)

#: The property that lists the names of the tags an event got from its context.
CONTEXT_TAGS_KEY: Final = "$context_tags"


class Scope:
    """The state of one ``new_context()`` block: tags, distinct id and session id."""

    __slots__ = ("_properties", "distinct_id", "session_id", "tags")

    def __init__(self, parent: Scope | None, fresh: bool) -> None:
        inherit = parent is not None and not fresh
        self.tags: dict[str, Any] = dict(parent.tags) if inherit and parent else {}
        self.distinct_id: str | None = parent.distinct_id if inherit and parent else None
        self.session_id: str | None = parent.session_id if inherit and parent else None
        self._properties: dict[str, Any] | None = None

    def properties(self) -> dict[str, Any]:
        """What the scope adds to an event's properties: the tags, ``$context_tags`` and
        ``$session_id``; the caller's own properties go over them. Do not change the result.
        """
        props = self._properties
        if props is None:
            props = dict(self.tags)
            if self.tags:
                props[CONTEXT_TAGS_KEY] = list(self.tags)
            if self.session_id is not None and "$session_id" not in props:
                props["$session_id"] = self.session_id
            self._properties = props
        return props

    def changed(self) -> None:
        self._properties = None


_current: ContextVar[Scope | None] = ContextVar("analytics_queue_context", default=None)

#: ``track()`` reads the current scope with this: one C call, None outside any scope.
current_scope: Final = _current.get


@contextmanager
def new_context(fresh: bool = False) -> Iterator[None]:
    """Open a scope for the ``with`` block; events tracked inside get its tags and identity.

    Args:
        fresh: start empty instead of with the enclosing scope's tags, distinct id and session.

    Example::

        with analytics_queue.new_context():
            analytics_queue.identify_context("user-123")
            analytics_queue.tag("plan", "pro")
            analytics_queue.track("story_generated")   # distinct_id "user-123", plan "pro"
    """
    scope = Scope(_current.get(), fresh)
    token = _current.set(scope)
    try:
        yield
    finally:
        _current.reset(token)


def tag(key: str, value: Any) -> None:
    """Add a property to every event tracked in the current scope (nothing outside one).

    The value is checked and copied now; one that cannot be sent as JSON is left out with a
    warning, as is a key that is not a str.
    """
    scope = _current.get()
    if scope is None:
        return
    if not isinstance(key, str):
        logger.warning("analytics context tag ignored: key must be a str, got %s", type(key))
        return
    try:
        checked = capture_properties("context tag", {key: value})
    except RefusedError as exc:
        logger.warning("analytics context tag %r ignored: %s", key, exc)
        return
    scope.tags.update(checked)
    scope.changed()


def get_tags() -> dict[str, Any]:
    """A copy of the current scope's tags (empty outside any scope)."""
    scope = _current.get()
    return {} if scope is None else dict(scope.tags)


def identify_context(distinct_id: str) -> None:
    """Give events tracked in the current scope (and scopes opened inside it) this distinct id,
    when ``track()`` is called without one. Nothing happens outside a scope.
    """
    scope = _current.get()
    if scope is None:
        return
    try:
        scope.distinct_id = check_distinct_id("context", distinct_id)
    except RefusedError as exc:
        logger.warning("analytics context distinct id ignored: %s", exc)


def set_context_session(session_id: str) -> None:
    """Give events tracked in the current scope this ``$session_id`` (unless they set one)."""
    scope = _current.get()
    if scope is None:
        return
    if not isinstance(session_id, str) or not session_id:
        logger.warning("analytics context session id ignored: must be a non-empty str")
        return
    scope.session_id = str(session_id)
    scope.changed()


def get_context_distinct_id() -> str | None:
    """The distinct id of the current scope, or None."""
    scope = _current.get()
    return None if scope is None else scope.distinct_id


def get_context_session_id() -> str | None:
    """The session id of the current scope, or None."""
    scope = _current.get()
    return None if scope is None else scope.session_id
