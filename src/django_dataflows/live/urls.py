"""Live status URLs, included under ``dataflows/api/`` next to the REST API's."""

from __future__ import annotations

from django.urls import path

from django_dataflows.live import views

app_name = "dataflows_live"

urlpatterns = [
    path("runs/<int:pk>/events/", views.run_events, name="run-events"),
    path("events/", views.events, name="events"),
]
