"""URLs: ``path("dataflows/", include("django_dataflows.urls"))``."""

from __future__ import annotations

from django.urls import path

import django_dataflows.monitoring as monitoring
import django_dataflows.views as views

app_name = "dataflows"

urlpatterns = [
    path("heartbeat/", views.heartbeat, name="heartbeat"),
    # Without the slash Django's APPEND_SLASH would answer a POST with a redirect, which
    # `curl -f` counts as success although nothing ran: answer it here instead.
    path("heartbeat", views.heartbeat, name="heartbeat-without-slash"),
    path("health/", monitoring.health, name="health"),
    path("metrics/", monitoring.metrics, name="metrics"),
]
