"""Settings of the Django example: the least a project needs to use analytics_queue.django."""

from __future__ import annotations

import os

DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "analytics_queue.django",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "examples.django_app.urls"
WSGI_APPLICATION = "examples.django_app.wsgi.application"
# Signed-cookie sessions: the example needs no database.
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

# analytics_queue: POSTHOG_API_KEY and POSTHOG_HOST are read from the environment when they are
# not set here; the ANALYTICS_QUEUE dict holds the other options.
ANALYTICS_QUEUE = {"environment": os.environ.get("DJANGO_ENVIRONMENT", "example")}
