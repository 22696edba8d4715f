"""The endpoint guard of the Flask and Django integrations, from its setting.

``ANALYTICS_QUEUE_ENDPOINT_GUARD`` names who may read ``/analytics/health`` and
``/analytics/metrics``: a callable taking the framework's request and returning a true value to
allow it, or the dotted import path of one. Pure function; safe from any thread.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable
from typing import Any

#: The setting's name, the same key in Flask's ``app.config`` and in Django's settings.
GUARD_SETTING = "ANALYTICS_QUEUE_ENDPOINT_GUARD"


def resolve_guard(setting: object) -> Callable[[Any], Any] | None:
    """The guard a setting names: None, a callable, or a dotted import path.

    Raises:
        ValueError: the path cannot be imported, or the value is not callable.
    """
    if setting is None:
        return None
    if isinstance(setting, str):
        try:
            setting = pkgutil.resolve_name(setting)
        except (ImportError, AttributeError, ValueError):
            raise ValueError(f"cannot import {setting!r}") from None
    if not callable(setting):
        raise ValueError(f"must be a callable or its dotted path, got {type(setting).__name__}")
    guard: Callable[[Any], Any] = setting
    return guard
