"""URLs: ``path("dataflows/", include("django_dataflows.urls"))``."""

from __future__ import annotations

from django.urls import path

from django_dataflows import views

app_name = "dataflows"

urlpatterns = [
    path("heartbeat/", views.heartbeat, name="heartbeat"),
    # Without the slash Django's APPEND_SLASH would answer a POST with a redirect, which
    # `curl -f` counts as success although nothing ran: answer it here instead.
    path("heartbeat", views.heartbeat, name="heartbeat-without-slash"),
]
