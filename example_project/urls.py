"""URLs of the example project: the admin, django-dataflows' heartbeat, REST API and streams."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index")),
    path("admin/", admin.site.urls),
    path("dataflows/", include("django_dataflows.urls")),
]

if "rest_framework" in settings.INSTALLED_APPS:  # the REST API includes the live streams
    urlpatterns.append(path("dataflows/api/", include("django_dataflows.api.urls")))
else:
    urlpatterns.append(path("dataflows/api/", include("django_dataflows.live.urls")))
