"""Serializers: how flows, runs, steps and statistics look in the API (and in live events).

Thin on purpose: a serializer shapes data and checks input; every state change happens in
the model or in :class:`~django_dataflows.executor.FlowExecutor`. The run representation is
a contract (``DESIGN.md``, "A run is {...}"): the live-status streams send exactly the same
JSON, so keep these importable and stable.
"""

from __future__ import annotations

import math
from typing import Any

from rest_framework import serializers

from django_dataflows.models import (
    DataFlow,
    DataFlowRun,
    DataFlowRunStep,
    RunStatus,
    RunTrigger,
    StepStatus,
)

#: Deepest nesting accepted in a JSON body (configuration, input): keeps validation and
#: storage bounded whatever a client sends.
MAX_JSON_DEPTH = 32


def _json_problem(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` cannot be stored as JSON in every supported database, or ``None``."""
    if depth > MAX_JSON_DEPTH:
        return f"nested deeper than {MAX_JSON_DEPTH} levels"
    if isinstance(value, str):
        return "contains a NUL character (\\u0000)" if "\x00" in value else None
    if isinstance(value, float):
        return None if math.isfinite(value) else "contains a number that is not finite"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _json_problem(key, depth + 1) or _json_problem(item, depth + 1)
            if problem:
                return problem
    elif isinstance(value, list):
        for item in value:
            problem = _json_problem(item, depth + 1)
            if problem:
                return problem
    return None


def validate_storable_json_object(value: Any) -> None:
    """A JSON object that PostgreSQL and SQLite both store as given (no NUL, no NaN)."""
    if not isinstance(value, dict):
        raise serializers.ValidationError('Enter a JSON object, such as {"batch_size": 500}.')
    problem = _json_problem(value)
    if problem:
        raise serializers.ValidationError(f"This JSON object {problem}.")


class JSONObjectField(serializers.JSONField):
    """A JSON object (never a list, string or null), storable in every database."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validators.append(validate_storable_json_object)


# -- runs -------------------------------------------------------------------------------


class RunStepSerializer(serializers.ModelSerializer):
    """One step of a run, as it appears in the run's ``steps`` list."""

    status = serializers.ChoiceField(choices=StepStatus.choices, read_only=True)

    class Meta:
        model = DataFlowRunStep
        fields = (
            "name",
            "position",
            "status",
            "started_at",
            "ended_at",
            "duration_ms",
            "result",
            "error_message",
        )
        read_only_fields = fields


class DataFlowRunSerializer(serializers.ModelSerializer):
    """A run with its steps. ``error_backtrace`` is present only for staff users.

    Give it ``context={"request": request}`` (views do); without a request, or for a
    non-staff user, the backtrace key is left out. Querysets should
    ``select_related("data_flow")`` and ``prefetch_related("steps")``.
    """

    flow = serializers.IntegerField(source="data_flow_id", read_only=True)
    flow_name = serializers.CharField(source="data_flow.name", read_only=True)
    status = serializers.ChoiceField(choices=RunStatus.choices, read_only=True)
    trigger = serializers.ChoiceField(choices=RunTrigger.choices, read_only=True)
    triggered_by = serializers.IntegerField(
        source="triggered_by_id", read_only=True, allow_null=True
    )
    # required=False: the key is absent for users who may not see backtraces.
    error_backtrace = serializers.CharField(read_only=True, required=False)
    steps = RunStepSerializer(many=True, read_only=True)
    cancel_requested = serializers.SerializerMethodField()
    pause_requested = serializers.SerializerMethodField()

    class Meta:
        model = DataFlowRun
        fields = (
            "id",
            "flow",
            "flow_name",
            "status",
            "trigger",
            "triggered_by",
            "scheduled_for",
            "created_at",
            "started_at",
            "ended_at",
            "duration_ms",
            "input",
            "result",
            "error_message",
            "error_backtrace",
            "attempt",
            "queue",
            "progress",
            "steps",
            "cancel_requested",
            "pause_requested",
            "updated_at",
        )
        read_only_fields = fields

    def get_cancel_requested(self, run: DataFlowRun) -> bool:
        return run.cancel_requested_at is not None

    def get_pause_requested(self, run: DataFlowRun) -> bool:
        return run.pause_requested_at is not None

    def to_representation(self, instance: DataFlowRun) -> dict[str, Any]:
        data: dict[str, Any] = super().to_representation(instance)
        if not can_see_backtraces(self.context.get("request")):
            data.pop("error_backtrace", None)
        return data


def can_see_backtraces(request: Any) -> bool:
    """Backtraces name files, code and sometimes data: staff users only."""
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


class RunStatusSerializer(serializers.ModelSerializer):
    """The small live view of a run (``runs/{id}/status/``)."""

    status = serializers.ChoiceField(choices=RunStatus.choices, read_only=True)
    steps = RunStepSerializer(many=True, read_only=True)

    class Meta:
        model = DataFlowRun
        fields = ("id", "status", "progress", "steps", "updated_at")
        read_only_fields = fields


class StartRunSerializer(serializers.Serializer):
    """The body of ``flows/{id}/start/``: the run's own parameters, optional."""

    input = JSONObjectField(required=False, default=dict)


# -- flows ------------------------------------------------------------------------------


class DataFlowSerializer(serializers.ModelSerializer):
    """A flow: every ``DataFlow`` field. Scheduler-owned fields and ``state`` are read-only."""

    configuration = JSONObjectField(required=False)
    last_run_status = serializers.ChoiceField(
        choices=RunStatus.choices, read_only=True, allow_blank=True
    )

    class Meta:
        model = DataFlow
        fields = (
            "id",
            "name",
            "description",
            "flow",
            "enabled",
            "configuration",
            "run_interval",
            "queue",
            "max_retries",
            "timeout",
            "last_run_at",
            "last_run_status",
            "next_run_at",
            "state",
            "created_at",
            "updated_at",
        )
        read_only_fields = (
            "last_run_at",
            "last_run_status",
            "next_run_at",
            "state",
            "created_at",
            "updated_at",
        )
        extra_kwargs = {
            # The database columns are 32-bit on every backend; say so instead of a 500.
            "run_interval": {"max_value": 2_147_483_647},
            "timeout": {"max_value": 2_147_483_647},
            "max_retries": {"max_value": 32_767},
        }


# -- flow types and statistics -----------------------------------------------------------


class FlowTypeSerializer(serializers.Serializer):
    """A registered flow class (``flow-types/``)."""

    path = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    configuration_schema = serializers.JSONField(allow_null=True)
    steps = serializers.ListField(child=serializers.CharField())


class StatsSerializer(serializers.Serializer):
    """What ``DataFlowRun.objects.stats()`` returns: counts, success rate, durations."""

    total = serializers.IntegerField()
    pending = serializers.IntegerField()
    in_progress = serializers.IntegerField()
    paused = serializers.IntegerField()
    success = serializers.IntegerField()
    failed = serializers.IntegerField()
    cancelled = serializers.IntegerField()
    timed_out = serializers.IntegerField()
    success_rate = serializers.FloatField(
        allow_null=True,
        help_text="Percent: success / (success + failed + timed_out); null with none of those.",
    )
    avg_duration_ms = serializers.FloatField(allow_null=True)
    min_duration_ms = serializers.IntegerField(allow_null=True)
    max_duration_ms = serializers.IntegerField(allow_null=True)
    p50_duration_ms = serializers.FloatField(allow_null=True)
    p95_duration_ms = serializers.FloatField(allow_null=True)


class StatsQuerySerializer(serializers.Serializer):
    """Query parameters of the statistics endpoints."""

    since = serializers.DateTimeField(
        required=False, help_text="Only runs created at or after this instant (ISO 8601)."
    )
    flow = serializers.IntegerField(
        required=False, min_value=1, help_text="Only this flow's runs (stats/ only)."
    )


class UpcomingQuerySerializer(serializers.Serializer):
    count = serializers.IntegerField(required=False, default=5, min_value=1, max_value=50)


class UpcomingSerializer(serializers.Serializer):
    upcoming = serializers.ListField(child=serializers.DateTimeField())
