"""The Server-Sent Events views: ``runs/{id}/events/`` and ``events/`` (``?flow=``).

Same permissions as the API's ``runs/``: the project's Django REST framework
authentication classes when DRF is installed (else the session); with the
``dataflows.view_dataflowrun`` permission every run, else the runs of the flows the
user owns (another owner's run answers 404, as in the API). Errors are JSON, even when
the client asked for ``text/event-stream``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from django.apps import apps
from django.contrib.auth.models import AnonymousUser
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.cache import never_cache

from django_dataflows.conf import app_settings
from django_dataflows.live import get_event_source
from django_dataflows.live.base import EPOCH, LOOKBACK, load_run_ids, runs_queryset, to_micros
from django_dataflows.live.limits import (
    RETRY_AFTER,
    StreamsBusy,
    StreamSlot,
    database_turn,
    wsgi_stream_slots,
)
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


#: The largest event id a stream can have sent (microseconds up to the year 9999); larger
#: values, or anything but ASCII digits, are not ours and start the stream afresh.
MAX_EVENT_ID = to_micros(datetime.max.replace(tzinfo=UTC)) - to_micros(EPOCH + LOOKBACK)
#: The largest primary key any supported database stores.
MAX_ID = 2**63 - 1


def _ascii_int(text: str, maximum: int) -> int | None:
    """``text`` as a non-negative integer up to ``maximum``, else ``None`` (never an
    exception: ``int()`` would take ``²``-like digits, and 5,000 of them, and fail)."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(maximum)):
        return None
    value = int(text)
    return value if value <= maximum else None


def _last_event_id(request: HttpRequest) -> int | None:
    # Only ids this server could have sent are understood; anything else starts afresh.
    return _ascii_int(request.headers.get("Last-Event-ID", "").strip(), MAX_EVENT_ID)


def _busy(detail: str) -> JsonResponse:
    return _error(503, detail, **{"Retry-After": str(RETRY_AFTER)})


class _ReleasingBody:
    """A WSGI stream's body that gives its slot back when the server closes the response,
    also if it was never iterated (a generator's ``finally`` would then never run)."""

    def __init__(self, events: Iterator[bytes], slot: StreamSlot) -> None:
        self.events = events
        self.slot = slot

    def __iter__(self) -> Iterator[bytes]:
        return self.events

    def close(self) -> None:
        try:
            close = getattr(self.events, "close", None)
            if close is not None:
                close()
        finally:
            self.slot.release()


def _stream_response(request: HttpRequest, stream: Stream) -> HttpResponseBase:
    source = get_event_source()
    body: Any
    slot: StreamSlot | None = None
    if isinstance(request, ASGIRequest):
        body = async_events(source, stream)
    elif not request.META.get("wsgi.multithread", False) or not app_settings.SSE_WSGI_MAX_STREAMS:
        # One thread per worker process (gunicorn's sync workers), or no stream may hold
        # one: a short stream, its first events then a retry hint; the browser comes back
        # with Last-Event-ID. Live within about a second, and never holding the worker.
        body = sync_events(source, stream, max_seconds=0)
    else:
        # A WSGI stream holds a worker thread: a few per process, each for a while.
        slot = wsgi_stream_slots.take()
        if slot is None:
            return _busy(
                "This server process has as many live streams open as it serves "
                "(DATAFLOWS['SSE_WSGI_MAX_STREAMS']); try again shortly, or serve streams "
                "from ASGI."
            )
        events = sync_events(
            source, stream, slot=slot, max_seconds=app_settings.SSE_WSGI_MAX_SECONDS
        )
        body = _ReleasingBody(events, slot)
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
    try:
        with database_turn():
            user, error = _authenticate(request)
            if error is not None:
                return error
            if not runs_queryset().visible_to(user).filter(pk=pk).exists():
                return _error(404, "Not found.")
            last_event_id = _last_event_id(request)
            if last_event_id is not None:
                states = load_run_ids([pk])
                if states and states[0].finished and states[0].latest <= last_event_id:
                    # Nothing new for a finished run: 204 stops EventSource reconnecting.
                    return HttpResponse(status=204)
    except StreamsBusy as exc:
        return _busy(str(exc))
    # As in the API, only staff users see backtraces.
    stream = Stream(run_id=pk, backtrace=user.is_staff, last_event_id=last_event_id)
    return _stream_response(request, stream)


@never_cache
def events(request: HttpRequest) -> HttpResponseBase:
    """``GET events/``: every run (``?flow=ID`` for one flow's), until the client goes."""
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(request)
    flow = request.GET.get("flow", "").strip()
    flow_id = _ascii_int(flow, MAX_ID) if flow else None
    flow_ids: frozenset[int] | None = None
    try:
        with database_turn():
            user, error = _authenticate(request)
            if error is not None:
                return error
            if not may_see_every_run(user):
                # An owner's stream: their flows' runs only (the flows they own as it opens).
                owned = DataFlow.objects.filter(owner_id=user.pk).values_list("pk", flat=True)
                flow_ids = frozenset(owned)
                if not flow_ids:
                    return _error(403, FORBIDDEN)
            if flow and (
                flow_id is None
                or not DataFlow.objects.filter(pk=flow_id).exists()
                or not _may_see_flow(flow_id, flow_ids)
            ):
                return _error(
                    400,
                    {
                        "flow": [
                            "Select a valid choice. That choice is not one of the available "
                            "choices."
                        ]
                    },
                )
    except StreamsBusy as exc:
        return _busy(str(exc))
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
