"""A project that does not include the REST API (for the E030 check)."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [path("dataflows/", include("django_dataflows.urls"))]
