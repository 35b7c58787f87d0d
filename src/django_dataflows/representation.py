"""A run and its steps as JSON: the one shape the REST API and live status both send.

Datetimes are written as Django REST framework writes them, without importing it: in the
current time zone, ISO 8601 with UTC written ``Z`` by default, or with the ``strftime``
format a project sets as ``REST_FRAMEWORK["DATETIME_FORMAT"]``, so a run on a live stream
and the same run from the API carry the same strings.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from django_dataflows.models import DataFlowRun, DataFlowRunStep

Moment = Callable[[datetime | None], str | None]


ISO_8601 = "iso-8601"


def datetime_format() -> str:
    """The project's REST framework ``DATETIME_FORMAT`` (``"iso-8601"`` unless it sets one)."""
    configured = getattr(settings, "REST_FRAMEWORK", None) or {}
    output_format = configured.get("DATETIME_FORMAT", ISO_8601)
    return output_format if isinstance(output_format, str) else ISO_8601


def iso_moment(value: datetime | None) -> str | None:
    """``value`` as the API writes it, in the current time zone (see the module's text)."""
    if value is None:
        return None
    if settings.USE_TZ and timezone.is_aware(value):
        value = value.astimezone(timezone.get_current_timezone())
    output_format = datetime_format()
    if output_format.lower() != ISO_8601:
        return value.strftime(output_format)
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def flow_name(run: DataFlowRun) -> str:
    """The run's flow name: annotated by the API's querysets, else read from the flow."""
    name: str | None = getattr(run, "flow_name", None)
    return run.data_flow.name if name is None else name


def step_json(step: DataFlowRunStep, moment: Moment = iso_moment) -> dict[str, Any]:
    """A step as a run's ``steps`` list shows it."""
    return {
        "name": step.name,
        "position": step.position,
        "status": step.status,
        "started_at": moment(step.started_at),
        "ended_at": moment(step.ended_at),
        "duration_ms": step.duration_ms,
        "result": step.result,
        "error_message": step.error_message,
    }


def run_json(run: DataFlowRun, *, backtrace: bool, moment: Moment = iso_moment) -> dict[str, Any]:
    """A run with its steps (read through ``run.steps.all()``: prefetch them).

    ``error_backtrace`` only with ``backtrace`` (for users who may see it: staff).
    """
    data: dict[str, Any] = {
        "id": run.pk,
        "flow": run.data_flow_id,
        "flow_name": flow_name(run),
        "status": run.status,
        "trigger": run.trigger,
        "triggered_by": run.triggered_by_id,
        "scheduled_for": moment(run.scheduled_for),
        "created_at": moment(run.created_at),
        "started_at": moment(run.started_at),
        "ended_at": moment(run.ended_at),
        "duration_ms": run.duration_ms,
        "input": run.input,
        "result": run.result,
        "error_message": run.error_message,
        "error_backtrace": run.error_backtrace,
        "attempt": run.attempt,
        "queue": run.queue,
        "progress": run.progress,
        "steps": [step_json(step, moment) for step in run.steps.all()],
        "cancel_requested": run.cancel_requested_at is not None,
        "pause_requested": run.pause_requested_at is not None,
        "updated_at": moment(run.updated_at),
        "cpu_time_ms": run.cpu_time_ms,
        "db_queries": run.db_queries,
        "late": run.late_since is not None,
    }
    if not backtrace:
        del data["error_backtrace"]
    return data
