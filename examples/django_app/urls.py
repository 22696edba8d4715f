"""The example's routes: the story view and analytics_queue's health and metrics views."""

from __future__ import annotations

from django.urls import include, path

from examples.django_app import views

urlpatterns = [
    path("stories/", views.create_story, name="create_story"),
    path("analytics/", include("analytics_queue.django.urls")),
]
