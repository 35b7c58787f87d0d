from __future__ import annotations

from importlib.util import find_spec

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("dataflows/", include("django_dataflows.urls")),
    path("dataflows/api/", include("django_dataflows.live.urls")),
]

if find_spec("rest_framework") is not None:
    urlpatterns.append(path("dataflows/api/", include("django_dataflows.api.urls")))
