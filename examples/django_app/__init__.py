"""A minimal Django project that tracks events with analytics_queue.

``POST /stories/`` with ``{"topic": "..."}`` saves nothing and "generates" nothing: it tracks
``story_generated`` and answers 201. ``/analytics/health`` and ``/analytics/metrics`` come from
``analytics_queue.django.urls``. Run it::

    DJANGO_SETTINGS_MODULE=examples.django_app.settings django-admin runserver
    gunicorn "examples.django_app.wsgi:application"

``POSTHOG_API_KEY`` and ``POSTHOG_HOST`` come from the environment (none: events are logged).
"""
