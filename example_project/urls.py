"""URLs of the example project: the admin and django-dataflows' heartbeat."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index")),
    path("admin/", admin.site.urls),
    path("dataflows/", include("django_dataflows.urls")),
]
