"""The example's view: track an event per story, with a distinct id per visitor."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

import analytics_queue


def distinct_id_for(request: HttpRequest) -> str:
    """The user's primary key when logged in, else an anonymous id kept in the session.

    ``str(request.user.pk)`` alone would be ``"None"`` for every anonymous visitor, merging them
    all into one PostHog person.
    """
    user: Any = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return str(user.pk)
    anonymous_id = request.session.get("anonymous_id")
    if anonymous_id is None:
        anonymous_id = request.session["anonymous_id"] = f"anon-{uuid.uuid4()}"
    return str(anonymous_id)


@csrf_exempt  # an API endpoint of the example; keep CSRF protection in a real form view
@require_POST
def create_story(request: HttpRequest) -> HttpResponse:
    try:
        topic = json.loads(request.body or b"{}").get("topic")
    except (ValueError, AttributeError):
        topic = None
    if not isinstance(topic, str) or not topic.strip():
        return JsonResponse({"error": 'send JSON like {"topic": "owls"}'}, status=400)
    distinct_id = distinct_id_for(request)
    tracked = analytics_queue.track(
        "story_generated", distinct_id=distinct_id, properties={"topic": topic.strip()}
    )
    return JsonResponse({"topic": topic.strip(), "tracked": tracked}, status=201)
