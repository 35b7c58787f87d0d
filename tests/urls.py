from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("dataflows/", include("django_dataflows.urls")),
    path("dataflows/api/", include("django_dataflows.live.urls")),
]
