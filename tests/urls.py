from __future__ import annotations

from importlib.util import find_spec

from django.contrib import admin
from django.urls import include, path

from tests.live_probe import live_state

urlpatterns = [
    path("admin/", admin.site.urls),
    path("dataflows/", include("django_dataflows.urls")),
    path("test/live-state/", live_state),
]

# The REST API includes the live-status streams; without Django REST framework they are
# mounted on their own, as a project without the ``api`` extra would.
if find_spec("rest_framework") is not None:
    urlpatterns.append(path("dataflows/api/", include("django_dataflows.api.urls")))
else:
    urlpatterns.append(path("dataflows/api/", include("django_dataflows.live.urls")))
