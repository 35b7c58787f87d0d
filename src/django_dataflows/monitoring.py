"""Endpoints for outside monitors: ``GET dataflows/health/`` and ``GET dataflows/metrics/``.

``health/`` watches the watcher: an uptime monitor polling it notices when cron stops
calling the heartbeat, which the heartbeat itself cannot. ``metrics/`` is for Prometheus.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from importlib.util import find_spec
from typing import Any

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache

from django_dataflows.clock import database_now
from django_dataflows.conf import app_settings
from django_dataflows.metrics import exposition, read_figures
from django_dataflows.models import DataFlow, Heartbeat
from django_dataflows.security import presented_token, token_matches
from django_dataflows.views import check_caller

logger = logging.getLogger("django_dataflows.monitoring")


@dataclass
class Health:
    """What ``health/`` found: healthy, or the reasons it is not."""

    heartbeat_age: float | None
    overdue: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reasons


def check_health(now: datetime | None = None) -> Health:
    """Is a heartbeat arriving, and is every watched flow succeeding? Two queries."""
    now = now or database_now()
    heartbeat = Heartbeat.last()
    age = None if heartbeat is None else max(0.0, (now - heartbeat.received_at).total_seconds())
    overdue = list(DataFlow.objects.overdue(now).order_by("name").values_list("name", flat=True))
    health = Health(heartbeat_age=age, overdue=overdue)
    limit = app_settings.HEALTH_MAX_HEARTBEAT_AGE
    if age is None:
        health.reasons.append("No heartbeat has ever been received.")
    elif age > limit:
        health.reasons.append(f"No heartbeat for {age:.0f} seconds (the limit is {limit:g}).")
    if overdue:
        health.reasons.append(
            f"{len(overdue)} flow{'s are' if len(overdue) > 1 else ' is'} overdue."
        )
    return health


@never_cache
def health(request: HttpRequest) -> JsonResponse:
    """200 ``{"status": "ok"}`` or 503 with the reasons; flow names only with the token."""
    if request.method not in ("GET", "HEAD"):
        response = JsonResponse({"error": "Method not allowed; use GET."}, status=405)
        response["Allow"] = "GET, HEAD"
        return response
    try:
        found = check_health()
    except DatabaseError:
        logger.exception("Health check failed: the database is unavailable")
        return JsonResponse(
            {"status": "failing", "reasons": ["The database is unavailable."]}, status=503
        )
    body: dict[str, Any] = {
        "status": "ok" if found.ok else "failing",
        "heartbeat_age_seconds": None
        if found.heartbeat_age is None
        else round(found.heartbeat_age, 3),
        "flows_overdue": len(found.overdue),
    }
    if found.reasons:
        body["reasons"] = found.reasons
    token = app_settings.HEARTBEAT_TOKEN
    if token and token_matches(presented_token(request), token):
        body["overdue_flows"] = found.overdue
    return JsonResponse(body, status=200 if found.ok else 503)


@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus' text format, guarded like the heartbeat (allowlist, token)."""
    if request.method not in ("GET", "HEAD"):
        response = JsonResponse({"error": "Method not allowed; use GET."}, status=405)
        response["Allow"] = "GET, HEAD"
        return response
    refusal, _client = check_caller(request, "Metrics")
    if refusal is not None:
        return refusal
    if find_spec("prometheus_client") is None:
        return JsonResponse(
            {"error": "Metrics need prometheus_client: install django-dataflows[metrics]."},
            status=503,
        )
    try:
        figures = read_figures()
    except DatabaseError:
        logger.exception("Metrics scrape failed: the database is unavailable")
        return JsonResponse({"error": "The database is unavailable."}, status=503)
    content, content_type = exposition(figures)
    return HttpResponse(content, content_type=content_type)
