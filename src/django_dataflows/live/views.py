"""The Server-Sent Events views: ``runs/{id}/events/`` and ``events/`` (``?flow=``).

Same permissions as the API's ``runs/``: the project's Django REST framework
authentication classes when DRF is installed (else the session); with the
``dataflows.view_dataflowrun`` permission every run, else the runs of the flows the
user owns (another owner's run answers 404, as in the API). Errors are JSON, even when
the client asked for ``text/event-stream``.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.contrib.auth.models import AnonymousUser
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.cache import never_cache

from django_dataflows.live import get_event_source
from django_dataflows.live.base import load_run_ids, runs_queryset
from django_dataflows.live.streams import Stream, async_events, sync_events
from django_dataflows.models import DataFlow, may_see_every_run

FORBIDDEN = "You do not have permission to perform this action."


def _error(status: int, detail: Any, **headers: str) -> JsonResponse:
    body = detail if isinstance(detail, dict) else {"detail": detail}
    response = JsonResponse(body, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


def _authenticate(request: HttpRequest) -> tuple[Any, JsonResponse | None]:
    """The user, as the API would see them; or the JSON error the API would answer."""
    user: Any = getattr(request, "user", AnonymousUser())
    challenge = ""
    if apps.is_installed("rest_framework"):
        from rest_framework.exceptions import APIException
        from rest_framework.request import Request
        from rest_framework.settings import api_settings

        authenticators = [cls() for cls in api_settings.DEFAULT_AUTHENTICATION_CLASSES]
        drf_request = Request(request, authenticators=authenticators)
        try:
            user = drf_request.user
        except APIException as exc:
            return None, _error(exc.status_code, exc.detail)
        if authenticators:
            challenge = authenticators[0].authenticate_header(drf_request) or ""
    if not user.is_authenticated:
        detail = "Authentication credentials were not provided."
        if challenge:
            return None, _error(401, detail, **{"WWW-Authenticate": challenge})
        return None, _error(403, detail)
    return user, None


def _last_event_id(request: HttpRequest) -> int | None:
    value = request.headers.get("Last-Event-ID", "").strip()
    # Only ids this server sent are understood; anything else starts afresh.
    return int(value) if value.isdigit() else None


def _stream_response(request: HttpRequest, stream: Stream) -> StreamingHttpResponse:
    source = get_event_source()
    body: Any
    if isinstance(request, ASGIRequest):
        body = async_events(source, stream)
    else:
        body = sync_events(source, stream)
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    # Proxies such as nginx would otherwise hold events back in their buffers.
    response["X-Accel-Buffering"] = "no"
    return response


def _method_not_allowed(request: HttpRequest) -> JsonResponse:
    return _error(405, f'Method "{request.method}" not allowed.', Allow="GET, HEAD, OPTIONS")


@never_cache
def run_events(request: HttpRequest, pk: int) -> HttpResponseBase:
    """``GET runs/{id}/events/``: one run's status, until it ends."""
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(request)
    user, error = _authenticate(request)
    if error is not None:
        return error
    if not runs_queryset().visible_to(user).filter(pk=pk).exists():
        return _error(404, "Not found.")
    last_event_id = _last_event_id(request)
    if last_event_id is not None:
        states = load_run_ids([pk])
        if states and states[0].finished and states[0].latest <= last_event_id:
            # Nothing new for a finished run: 204 tells EventSource to stop reconnecting.
            return HttpResponse(status=204)
    # As in the API, only staff users see backtraces.
    stream = Stream(run_id=pk, backtrace=user.is_staff, last_event_id=last_event_id)
    return _stream_response(request, stream)


@never_cache
def events(request: HttpRequest) -> HttpResponseBase:
    """``GET events/``: every run (``?flow=ID`` for one flow's), until the client goes."""
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(request)
    user, error = _authenticate(request)
    if error is not None:
        return error
    flow_id: int | None = None
    flow_ids: frozenset[int] | None = None
    if not may_see_every_run(user):
        # An owner's stream: their flows' runs only (the flows they own as it opens).
        owned = DataFlow.objects.filter(owner_id=user.pk).values_list("pk", flat=True)
        flow_ids = frozenset(owned)
        if not flow_ids:
            return _error(403, FORBIDDEN)
    flow = request.GET.get("flow", "").strip()
    if flow:
        if not flow.isdigit() or not _may_see_flow(int(flow), flow_ids):
            return _error(
                400,
                {
                    "flow": [
                        "Select a valid choice. That choice is not one of the available choices."
                    ]
                },
            )
        flow_id = int(flow)
    stream = Stream(
        flow_id=flow_id,
        flow_ids=flow_ids,
        backtrace=user.is_staff,
        last_event_id=_last_event_id(request),
    )
    return _stream_response(request, stream)


def _may_see_flow(flow_id: int, flow_ids: frozenset[int] | None) -> bool:
    """Whether the flow exists among the ones the client sees (all, or ``flow_ids``)."""
    if flow_ids is not None:
        return flow_id in flow_ids
    return DataFlow.objects.filter(pk=flow_id).exists()
