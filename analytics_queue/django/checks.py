"""System checks: ``analytics_queue.E001`` (a bad option) and ``analytics_queue.W001`` (no key)."""

# Django ships no type information: its names are Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from analytics_queue._endpoint_guard import GUARD_SETTING, resolve_guard
from analytics_queue.config import (
    DJANGO_SETTINGS,
    OPTION_NAMES,
    OPTIONS_BY_NAME,
    Problem,
    validate_options,
)


def _hint(problem: Problem, name: str) -> str:
    if problem.message == "unknown option":
        if name in OPTIONS_BY_NAME:
            return f"Set {OPTIONS_BY_NAME[name].django_setting} in settings instead."
        close = difflib.get_close_matches(name, OPTION_NAMES, n=1)
        guess = f"Did you mean {close[0]!r}? " if close else ""
        return guess + "The options are: " + ", ".join(OPTION_NAMES) + "."
    return "Fix the value, or remove it to use the environment variable or the default."


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Check the POSTHOG_* settings and the ANALYTICS_QUEUE dict.

    Returns:
        ``analytics_queue.E001`` errors for every bad or unknown option, and the
        ``analytics_queue.W001`` warning when no API key is set in settings or the environment
        (events are then logged, not sent) unless analytics is disabled.
    """
    messages: list[CheckMessage] = []
    for setting, option in DJANGO_SETTINGS.items():
        for problem in validate_options({option: getattr(settings, setting, None)}):
            messages.append(
                Error(
                    f"settings.{setting}: {problem.message}",
                    hint="Fix the value, or remove it to use the environment variable.",
                    id="analytics_queue.E001",
                )
            )
    raw = getattr(settings, "ANALYTICS_QUEUE", None) or {}
    if not isinstance(raw, Mapping):
        messages.append(
            Error(
                f"settings.ANALYTICS_QUEUE must be a dict of options, got {type(raw).__name__}",
                hint='For example ANALYTICS_QUEUE = {"batch_size": 20}.',
                id="analytics_queue.E001",
            )
        )
        raw = {}
    for name, value in raw.items():
        if name in OPTIONS_BY_NAME and name not in OPTION_NAMES:
            messages.append(
                Error(
                    f"settings.ANALYTICS_QUEUE: {name!r} is not read from this dict",
                    hint=_hint(Problem(name, "unknown option"), name),
                    id="analytics_queue.E001",
                )
            )
            continue
        for problem in validate_options({name: value}):
            messages.append(
                Error(
                    f"settings.ANALYTICS_QUEUE: {problem}",
                    hint=_hint(problem, str(name)),
                    id="analytics_queue.E001",
                )
            )
    try:
        resolve_guard(getattr(settings, GUARD_SETTING, None))
    except ValueError as exc:
        messages.append(
            Error(
                f"settings.{GUARD_SETTING}: {exc}",
                hint="Name a callable that takes the request and returns True to allow it, "
                'e.g. "analytics_queue.django.views.staff_only".',
                id="analytics_queue.E001",
            )
        )
    key = getattr(settings, "POSTHOG_API_KEY", None)
    if key is None:
        key = os.environ.get("POSTHOG_API_KEY") or os.environ.get("ANALYTICS_QUEUE_API_KEY")
    if not (isinstance(key, str) and key.strip()) and raw.get("disabled") is not True:
        messages.append(
            Warning(
                "no PostHog API key: analytics events are logged, not sent",
                hint="Set POSTHOG_API_KEY in settings or in the environment.",
                id="analytics_queue.W001",
            )
        )
    return messages
