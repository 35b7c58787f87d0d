"""URLs: ``path("dataflows/", include("django_dataflows.urls"))``."""

from __future__ import annotations

from django.urls import path

from django_dataflows import views

app_name = "dataflows"

urlpatterns = [
    path("heartbeat/", views.heartbeat, name="heartbeat"),
]
