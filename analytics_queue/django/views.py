"""The health and metrics views of the default AnalyticsQueue (``analytics_queue.django.urls``).

They answer anyone unless ``settings.ANALYTICS_QUEUE_ENDPOINT_GUARD`` names a check: a callable,
or its dotted path, that takes the request and returns a true value to let it through; a false
value answers 403. :func:`staff_only` is one: ``"analytics_queue.django.views.staff_only"``.
"""

# Django ships no type information: its names are Any here.
# mypy: disable-error-code="import-untyped,untyped-decorator"

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

import analytics_queue
from analytics_queue._endpoint_guard import GUARD_SETTING, resolve_guard
from analytics_queue.prometheus import CONTENT_TYPE, choose_format, render_text

View = Callable[[HttpRequest], HttpResponse]


def staff_only(request: HttpRequest) -> bool:
    """An endpoint guard: only logged-in staff users (``user.is_staff``) see health and metrics."""
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff)


def _guarded(view: View) -> View:
    @wraps(view)
    def check(request: HttpRequest) -> HttpResponse:
        guard = resolve_guard(getattr(settings, GUARD_SETTING, None))
        if guard is not None and not guard(request):
            response = JsonResponse({"error": "forbidden"}, status=403)
            response["Cache-Control"] = "no-store"
            return response
        return view(request)

    return check


@_guarded
@require_GET
@never_cache
def health(request: HttpRequest) -> HttpResponse:
    """The health verdict as JSON: 200 when healthy or degraded, 503 when critical."""
    verdict = analytics_queue.get_health()
    return JsonResponse(verdict.to_dict(), status=503 if verdict.status == "critical" else 200)


@_guarded
@require_GET
@never_cache
@vary_on_headers("Accept")
def metrics(request: HttpRequest) -> HttpResponse:
    """The metrics as JSON, or in the Prometheus text format when asked.

    ``?format=prometheus`` or an ``Accept`` header preferring ``text/plain`` (as Prometheus
    sends) gives the text format; ``?format=json``, ``*/*`` or no header gives JSON.
    """
    try:
        fmt = choose_format(request.GET.get("format"), request.headers.get("Accept"))
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    if fmt == "prometheus":
        return HttpResponse(render_text(analytics_queue.get_default()), content_type=CONTENT_TYPE)
    return JsonResponse(analytics_queue.get_metrics().to_dict())
