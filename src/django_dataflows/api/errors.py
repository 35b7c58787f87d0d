"""The API's one exception handler: domain errors become JSON answers with their codes."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError, ValidationError
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler as drf_exception_handler

from django_dataflows.exceptions import (
    EnqueueFailed,
    FlowHasActiveRun,
    InvalidRunState,
    RunAlreadyActive,
)


class Conflict(APIException):
    """The state of the flow or run forbids the request (409)."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state of the resource."
    default_code = "conflict"


class BackendUnavailable(APIException):
    """The execution backend refused the run, e.g. its broker is down (503)."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The execution backend could not accept the run."
    default_code = "backend_unavailable"


class RequestTooLarge(APIException):
    """The body is over Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (413)."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "request_too_large"


class StrictJSONParser(JSONParser):
    """DRF's JSON parser, refusing a body nested too deep for the decoder (400, not 500)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the body is nested too deeply.") from None


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Map the app's errors to DRF's, then let DRF answer (always JSON).

    ``InvalidRunState``, ``RunAlreadyActive`` and ``FlowHasActiveRun`` are 409,
    ``EnqueueFailed`` 503, a body over Django's upload limit 413, a Django
    ``ValidationError`` (a model rule) 400 with the same shape as serializer errors.
    """
    if isinstance(exc, InvalidRunState | RunAlreadyActive | FlowHasActiveRun):
        exc = Conflict(str(exc))
    elif isinstance(exc, EnqueueFailed):
        exc = BackendUnavailable(f"The execution backend could not accept the run: {exc}")
    elif isinstance(exc, RequestDataTooBig):
        exc = RequestTooLarge(f"The request body is too large: {exc}")
    elif isinstance(exc, DjangoValidationError):
        exc = ValidationError(as_serializer_error(exc))
    response: Response | None = drf_exception_handler(exc, context)
    return response
