"""URLs of the health and metrics views.

Include them with ``path("analytics/", include("analytics_queue.django.urls"))``.
Both routes answer with and without a trailing slash, so that a load balancer's health check
needs no redirect. Names: ``analytics_queue:health`` and ``analytics_queue:metrics``.
"""

# Django ships no type information: its names are Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

from django.urls import re_path

from analytics_queue.django import views

app_name = "analytics_queue"

urlpatterns = [
    re_path(r"^health/?$", views.health, name="health"),
    re_path(r"^metrics/?$", views.metrics, name="metrics"),
]
