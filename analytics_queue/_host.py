"""Host normalisation: the PostHog host a configured URL stands for.

Behaves like posthog-python's ``posthog.request.determine_server_host`` (a test compares the
two), so a host that works with posthog-python works here, without importing posthog and
requests at run time.

Thread safety: pure functions, safe to call from any thread.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_HOST", "EU_INGESTION_HOST", "US_INGESTION_HOST", "normalize_host"]

US_INGESTION_HOST: Final = "https://us.i.posthog.com"
EU_INGESTION_HOST: Final = "https://eu.i.posthog.com"
DEFAULT_HOST: Final = US_INGESTION_HOST

# PostHog's app hosts, which serve the UI: events sent there are redirected, so send them to
# the region's ingestion host directly.
_APP_HOSTS: Final[dict[str, str]] = {
    "https://app.posthog.com": US_INGESTION_HOST,
    "https://us.posthog.com": US_INGESTION_HOST,
    "https://eu.posthog.com": EU_INGESTION_HOST,
}


def normalize_host(url: str | None) -> str:
    """The host to send events to for a configured ``url``.

    Surrounding whitespace is stripped; an empty or missing value means `DEFAULT_HOST`; a
    PostHog app host (``https://us.posthog.com``, ``https://app.posthog.com``,
    ``https://eu.posthog.com``, with or without one trailing slash) becomes its region's
    ingestion host. Any other value is returned stripped but otherwise unchanged (a trailing
    slash stays).

    Args:
        url: the configured host, e.g. ``"https://eu.posthog.com"`` or a self-hosted URL.

    Returns:
        The URL to send to, e.g. ``"https://eu.i.posthog.com"``.
    """
    host = (url or "").strip()
    if not host:
        return DEFAULT_HOST
    return _APP_HOSTS.get(host[:-1] if host.endswith("/") else host, host)
