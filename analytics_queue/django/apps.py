"""The Django AppConfig: configures the default AnalyticsQueue from settings."""

# Django ships no type information: its names are Any here.
# mypy: disable-error-code="import-untyped"
# mypy: allow-subclassing-any

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.core.signals import setting_changed

import analytics_queue
from analytics_queue.config import DJANGO_SETTINGS, OPTION_NAMES, OPTIONS_BY_NAME, validate_options

logger = logging.getLogger(__name__)

#: The settings this app reads; a change to any of them (``override_settings``) reconfigures.
SETTING_NAMES: Final = ("ANALYTICS_QUEUE", *DJANGO_SETTINGS)


def options_from_settings() -> dict[str, Any]:
    """The AnalyticsQueue options that settings give, without the invalid ones (logged instead).

    The ``ANALYTICS_QUEUE`` dict gives options by name; settings of their own
    (``POSTHOG_API_KEY``, ``POSTHOG_HOST``, ``ANALYTICS_QUEUE_REQUEST_CONTEXT``...: the
    ``django_setting`` of each option in :data:`analytics_queue.config.OPTIONS`) win over it when
    set and not None. A bad value is logged at ERROR and left out, so the option falls back to
    its environment variable or default, like a bad environment value does; ``manage.py check``
    reports it as ``analytics_queue.E001``.
    """
    given: dict[str, Any] = {}
    raw = getattr(settings, "ANALYTICS_QUEUE", None) or {}
    if isinstance(raw, Mapping):
        for name, value in raw.items():
            if name in OPTION_NAMES or name not in OPTIONS_BY_NAME:
                given[name] = value
            else:
                logger.error(
                    "ignoring settings.ANALYTICS_QUEUE[%r]: set %s instead",
                    name,
                    OPTIONS_BY_NAME[name].django_setting,
                )
    else:
        logger.error(
            "ignoring settings.ANALYTICS_QUEUE: must be a dict of options, got %s",
            type(raw).__name__,
        )
    for setting, option in DJANGO_SETTINGS.items():
        value = getattr(settings, setting, None)
        if value is not None:
            given[option] = value
    options: dict[str, Any] = {}
    for name, value in given.items():
        problems = validate_options({name: value})
        if problems:
            logger.error("ignoring a setting of analytics_queue: %s", "; ".join(map(str, problems)))
        else:
            options[name] = value
    return options


def configure_from_settings() -> analytics_queue.AnalyticsQueue:
    """(Re)configure the default AnalyticsQueue from settings; the old one is shut down."""
    return analytics_queue.configure(**options_from_settings())


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in SETTING_NAMES:
        configure_from_settings()
    elif setting == "MIDDLEWARE" and kwargs.get("enter"):
        add_middleware()


def add_middleware() -> None:
    """Append the request-context middleware to ``MIDDLEWARE`` unless it is listed.

    Last, so that it runs after ``AuthenticationMiddleware``; it does nothing when the
    ``request_context`` option is off.
    """
    from analytics_queue.django.middleware import MIDDLEWARE_PATH

    current = list(getattr(settings, "MIDDLEWARE", None) or [])
    if MIDDLEWARE_PATH not in current:
        settings.MIDDLEWARE = [*current, MIDDLEWARE_PATH]


class AnalyticsQueueConfig(AppConfig):
    """``analytics_queue.django``: add it to ``INSTALLED_APPS``."""

    name = "analytics_queue.django"
    label = "analytics_queue"
    verbose_name = "Analytics queue"

    def ready(self) -> None:
        """Register the system checks, configure the default AnalyticsQueue from settings and
        add the request-context middleware (see :mod:`analytics_queue.django.middleware`).
        """
        from analytics_queue.django.checks import check_settings

        checks.register(check_settings)
        setting_changed.connect(_on_setting_changed, dispatch_uid="analytics_queue.settings")
        configure_from_settings()
        add_middleware()
