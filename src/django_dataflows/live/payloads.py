"""Runs and steps as the REST API shows them, for the live status events.

Built from the models alone, so live status works without Django REST framework; the
fields are those of the API's run representation (``docs/reference/api.md``), pinned by
a test against the API's serializers when they are installed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django_dataflows.models import DataFlowRun, DataFlowRunStep


def _time(value: datetime | None) -> str | None:
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def step_payload(step: DataFlowRunStep) -> dict[str, Any]:
    """A step as the API shows it, plus ``run`` (its run's id)."""
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


def run_payload(
    run: DataFlowRun, steps: list[DataFlowRunStep], *, backtrace: bool
) -> dict[str, Any]:
    """A run as the API shows it; ``error_backtrace`` only when ``backtrace`` (staff)."""
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
            {key: value for key, value in step_payload(step).items() if key != "run"}
            for step in steps
        ],
        "cancel_requested": run.cancel_requested_at is not None,
        "pause_requested": run.pause_requested_at is not None,
        "updated_at": _time(run.updated_at),
    }
    if backtrace:
        payload["error_backtrace"] = run.error_backtrace
    return payload
