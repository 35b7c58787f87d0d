"""Runs and steps as the REST API shows them, for the live status events.

With Django REST framework installed, the API's own serializers shape them; without it
(live status does not need the ``api`` extra) the same fields are built here, and a test
pins that both agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.apps import apps

from django_dataflows.models import DataFlowRun, DataFlowRunStep


def _time(value: datetime | None) -> str | None:
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _use_api() -> bool:
    return apps.is_installed("rest_framework")


def step_payload(step: DataFlowRunStep) -> dict[str, Any]:
    """A step as the API shows it, plus ``run`` (its run's id)."""
    if _use_api():
        from django_dataflows.api.serializers import RunStepSerializer

        return {"run": step.run_id, **RunStepSerializer(step).data}
    return builtin_step_payload(step)


def run_payload(run: DataFlowRun, *, backtrace: bool) -> dict[str, Any]:
    """A run as the API shows it; ``error_backtrace`` only when ``backtrace`` (staff).

    Its steps are read through ``run.steps.all()``: prefetch them.
    """
    if _use_api():
        from django_dataflows.api.serializers import DataFlowRunSerializer

        data = dict(DataFlowRunSerializer(run).data)
        if backtrace:
            data["error_backtrace"] = run.error_backtrace
        return data
    return builtin_run_payload(run, list(run.steps.all()), backtrace=backtrace)


def builtin_step_payload(step: DataFlowRunStep) -> dict[str, Any]:
    """:func:`step_payload` without Django REST framework."""
    return {
        "run": step.run_id,
        "name": step.name,
        "position": step.position,
        "status": step.status,
        "started_at": _time(step.started_at),
        "ended_at": _time(step.ended_at),
        "duration_ms": step.duration_ms,
        "result": step.result,
        "error_message": step.error_message,
    }


def builtin_run_payload(
    run: DataFlowRun, steps: list[DataFlowRunStep], *, backtrace: bool
) -> dict[str, Any]:
    """:func:`run_payload` without Django REST framework."""
    payload: dict[str, Any] = {
        "id": run.pk,
        "flow": run.data_flow_id,
        "flow_name": run.data_flow.name,
        "status": run.status,
        "trigger": run.trigger,
        "triggered_by": run.triggered_by_id,
        "scheduled_for": _time(run.scheduled_for),
        "created_at": _time(run.created_at),
        "started_at": _time(run.started_at),
        "ended_at": _time(run.ended_at),
        "duration_ms": run.duration_ms,
        "input": run.input,
        "result": run.result,
        "error_message": run.error_message,
        "attempt": run.attempt,
        "queue": run.queue,
        "progress": run.progress,
        "steps": [
            {key: value for key, value in builtin_step_payload(step).items() if key != "run"}
            for step in steps
        ],
        "cancel_requested": run.cancel_requested_at is not None,
        "pause_requested": run.pause_requested_at is not None,
        "updated_at": _time(run.updated_at),
        "cpu_time_ms": run.cpu_time_ms,
        "db_queries": run.db_queries,
        "late": run.late_since is not None,
    }
    if backtrace:
        payload["error_backtrace"] = run.error_backtrace
    return payload
