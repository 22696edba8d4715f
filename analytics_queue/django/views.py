"""The health and metrics views of the default AnalyticsQueue (``analytics_queue.django.urls``)."""

# Django ships no type information: its names are Any here.
# mypy: disable-error-code="import-untyped,untyped-decorator"

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

import analytics_queue
from analytics_queue.prometheus import CONTENT_TYPE, choose_format, render_text


@require_GET
@never_cache
def health(request: HttpRequest) -> HttpResponse:
    """The health verdict as JSON: 200 when healthy or degraded, 503 when critical."""
    verdict = analytics_queue.get_health()
    return JsonResponse(verdict.to_dict(), status=503 if verdict.status == "critical" else 200)


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
