"""URLs: ``path("dataflows/", include("django_dataflows.urls"))``."""

from __future__ import annotations

from django.urls import path

import django_dataflows.views as views

app_name = "dataflows"

urlpatterns = [
    path("heartbeat/", views.heartbeat, name="heartbeat"),
]
