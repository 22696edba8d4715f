"""Fixtures of the framework integration tests: a clean environment, queues that are always shut
down, and Django configured once (``settings.configure`` + ``django.setup()``) for the Django tests
only, so that the Flask and Prometheus tests never depend on it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import analytics_queue
import analytics_queue._default
from analytics_queue import AnalyticsQueue

TEST_KEY = "phc_integration_tests"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No POSTHOG_* or ANALYTICS_QUEUE_* from the machine reaches a test."""
    for name in list(os.environ):
        if name.startswith(("POSTHOG_", "ANALYTICS_QUEUE_")):
            monkeypatch.delenv(name)


@pytest.fixture
def make_queue(capture_server: Any) -> Iterator[Callable[..., AnalyticsQueue]]:
    """Build AnalyticsQueues that send to ``capture_server``; all are shut down afterwards."""
    made: list[AnalyticsQueue] = []

    def make(**options: Any) -> AnalyticsQueue:
        options.setdefault("api_key", TEST_KEY)
        options.setdefault("host", capture_server.url)
        options.setdefault("shutdown_timeout", 2.0)
        queue = AnalyticsQueue(**options)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.shutdown(timeout=2.0)


@pytest.fixture
def isolated_default(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test gets its own default instance; it is shut down and the previous one put back.

    ``configure()`` shuts down the instance it replaces: starting from no default means no
    instance made outside the test is ever shut down by it.
    """
    monkeypatch.setattr(analytics_queue._default, "_default", None)
    yield
    instance = analytics_queue._default._default
    if instance is not None:
        instance.shutdown(timeout=2.0)


#: The settings the Django tests start from (tests change them with ``override_settings``).
DJANGO_SETTINGS: dict[str, Any] = {
    "DEBUG": False,
    "SECRET_KEY": "analytics-queue-integration-tests",
    "ALLOWED_HOSTS": ["testserver"],
    "INSTALLED_APPS": ["analytics_queue.django"],
    "MIDDLEWARE": [],
    "ROOT_URLCONF": "analytics_queue.django.urls",
    "DATABASES": {},
    "USE_TZ": True,
    "LOGGING_CONFIG": None,
    "POSTHOG_API_KEY": TEST_KEY,
    "ANALYTICS_QUEUE": {"disabled": True, "shutdown_timeout": 1.0},
}


@pytest.fixture(scope="session")
def django_settings() -> Any:
    """Django configured once for the session; skipped when Django is not installed."""
    django = pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        with pytest.MonkeyPatch.context() as mp:
            # ready() configures the default instance: keep it away from other tests' one.
            mp.setattr(analytics_queue._default, "_default", None)
            settings.configure(**DJANGO_SETTINGS)
            django.setup()
            made = analytics_queue._default._default
            if made is not None:
                made.shutdown(timeout=1.0)
    return settings
