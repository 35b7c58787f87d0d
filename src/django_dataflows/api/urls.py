"""``path("dataflows/api/", include("django_dataflows.api.urls"))``."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import IsAuthenticated
from rest_framework.routers import SimpleRouter

from django_dataflows.api import views

app_name = "dataflows_api"


class Router(SimpleRouter):
    # Numeric ids only: anything else falls through to the JSON 404 at the end.
    def get_lookup_regex(self, viewset: object, lookup_prefix: str = "") -> str:
        return rf"(?P<{lookup_prefix}pk>[0-9]+)"


router = Router()
router.register("flows", views.DataFlowViewSet, basename="flow")
router.register("runs", views.DataFlowRunViewSet, basename="run")
router.register("audit", views.AuditEntryViewSet, basename="audit")
router.register("backfills", views.BackfillViewSet, basename="backfill")

#: The API's own endpoints: what the schema describes.
api_urlpatterns = [
    path("", include(router.urls)),
    path("flow-types/", views.FlowTypeListView.as_view(), name="flow-types"),
    path("stats/", views.StatsView.as_view(), name="stats"),
]


class SchemaView(SpectacularAPIView):
    """The OpenAPI 3 schema of this API only, with its own URL prefix as the server."""

    schema = AutoSchema()
    permission_classes = (IsAuthenticated,)
    patterns = api_urlpatterns

    # Out of every schema, ours and a project-wide one (drf-spectacular's own decorator
    # on the parent's method is built on the project's DEFAULT_SCHEMA_CLASS, which
    # ``check --deploy`` then trips over as drf_spectacular.E001).
    @views.document(exclude=True)
    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        prefix = request.path.removesuffix("schema/").rstrip("/")
        self.custom_settings = {
            "TITLE": "django-dataflows API",
            "DESCRIPTION": "Flows, runs, run control and statistics of django-dataflows.",
            "SERVERS": [{"url": prefix or "/"}],
            "COMPONENT_SPLIT_REQUEST": True,
            "ENUM_NAME_OVERRIDES": {
                "RunStatusEnum": "django_dataflows.models.RunStatus",
                "StepStatusEnum": "django_dataflows.models.StepStatus",
                "RunTriggerEnum": "django_dataflows.models.RunTrigger",
            },
        }
        response: HttpResponseBase = super().get(request, *args, **kwargs)  # type: ignore[no-untyped-call]
        return response


class SwaggerView(SpectacularSwaggerView):
    """Swagger UI for the schema above."""

    schema = AutoSchema()
    permission_classes = (IsAuthenticated,)

    @views.document(exclude=True)  # as SchemaView.get
    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response: HttpResponseBase = super().get(request, *args, **kwargs)  # type: ignore[no-untyped-call]
        return response


@csrf_exempt  # it changes nothing; a POST to a mistyped path must get this JSON 404 too
def not_found(request: HttpRequest, path: str = "") -> JsonResponse:
    """Unknown paths under the API answer JSON too."""
    return JsonResponse({"detail": "Not found."}, status=404)


urlpatterns = [
    *api_urlpatterns,
    path("schema/", SchemaView.as_view(), name="schema"),
    path(
        "schema/swagger-ui/",
        SwaggerView.as_view(url_name="dataflows_api:schema"),
        name="swagger-ui",
    ),
    # The live-status streams (runs/{id}/events/, events/) under the same prefix.
    path("", include("django_dataflows.live.urls")),
    # Keep last: anything else belongs above it.
    re_path(r"^(?P<path>.*)$", not_found),
]
