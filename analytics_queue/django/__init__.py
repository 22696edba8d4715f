"""Django integration: an installable app that configures the default AnalyticsQueue.

Install with the ``django`` extra (``pip install 'analytics-queue[django]'``), then::

    # settings.py
    INSTALLED_APPS = [..., "analytics_queue.django"]
    POSTHOG_API_KEY = env("POSTHOG_API_KEY")        # none: events are logged, not sent
    POSTHOG_HOST = "https://eu.i.posthog.com"        # default: https://us.i.posthog.com
    ANALYTICS_QUEUE = {"batch_size": 20, "environment": "production"}   # other options

    # urls.py
    urlpatterns = [..., path("analytics/", include("analytics_queue.django.urls"))]

    # views.py
    import analytics_queue
    analytics_queue.track("story_generated", distinct_id=request.user.pk, properties={...})

``AppConfig.ready()`` configures the default instance (the one ``analytics_queue.track()`` uses)
from these settings, and again whenever a test changes them with ``override_settings``. System
checks: ``analytics_queue.E001`` for a bad option, ``analytics_queue.W001`` when there is no API
key. Views: ``health`` (200 when healthy or degraded, 503 when critical) and ``metrics`` (JSON, or
the Prometheus text format with ``?format=prometheus`` or ``Accept: text/plain``).
"""
