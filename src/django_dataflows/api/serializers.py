"""Serializers: how flows, runs, steps and statistics look in the API (and in live events).

Thin on purpose: a serializer shapes data and checks input; every state change happens in
the model or in :class:`~django_dataflows.executor.FlowExecutor`. The run representation is
a contract (``DESIGN.md``, "A run is {...}"): the live-status streams send exactly the same
JSON, so keep these importable and stable.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from rest_framework import ISO_8601, serializers
from rest_framework.serializers import as_serializer_error
from rest_framework.settings import api_settings

from django_dataflows.models import (
    Backfill,
    DataFlow,
    DataFlowRun,
    DataFlowRunStep,
    RunStatus,
    RunTrigger,
    StepStatus,
    cycle_error,
    dependency_cycle,
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
    ``annotate(flow_name=F("data_flow__name"))`` (or ``select_related("data_flow")``) and
    ``prefetch_related("steps")``.
    """

    flow = serializers.IntegerField(source="data_flow_id", read_only=True)
    flow_name = serializers.SerializerMethodField()
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

    def get_flow_name(self, run: DataFlowRun) -> str:
        return flow_name(run)

    def get_cancel_requested(self, run: DataFlowRun) -> bool:
        return run.cancel_requested_at is not None

    def get_pause_requested(self, run: DataFlowRun) -> bool:
        return run.pause_requested_at is not None

    def to_representation(self, instance: DataFlowRun) -> dict[str, Any]:
        if _iso_datetimes():
            data = self.fast_representation(instance)
        else:  # the project formats datetimes its own way: let the fields do it
            data = super().to_representation(instance)
        if not can_see_backtraces(self.context.get("request")):
            data.pop("error_backtrace", None)
        return data

    @staticmethod
    def fast_representation(run: DataFlowRun) -> dict[str, Any]:
        """What the declared fields give, built directly: a page of 50 runs with their
        steps costs a few milliseconds instead of tens (``bench/stats.py``). A test pins
        it to the fields' own output."""
        moment = _datetime_formatter()
        return {
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
            "steps": [
                {
                    "name": step.name,
                    "position": step.position,
                    "status": step.status,
                    "started_at": moment(step.started_at),
                    "ended_at": moment(step.ended_at),
                    "duration_ms": step.duration_ms,
                    "result": step.result,
                    "error_message": step.error_message,
                }
                for step in run.steps.all()
            ],
            "cancel_requested": run.cancel_requested_at is not None,
            "pause_requested": run.pause_requested_at is not None,
            "updated_at": moment(run.updated_at),
        }


def _iso_datetimes() -> bool:
    output_format = api_settings.DATETIME_FORMAT
    return isinstance(output_format, str) and output_format.lower() == ISO_8601


def _datetime_formatter() -> Callable[[datetime | None], str | None]:
    """DRF's ISO 8601 output: in the current time zone, UTC written ``Z``."""
    zone = timezone.get_current_timezone() if settings.USE_TZ else None

    def moment(value: datetime | None) -> str | None:
        if value is None:
            return None
        if zone is not None and timezone.is_aware(value):
            value = value.astimezone(zone)
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text

    return moment


def flow_name(run: DataFlowRun) -> str:
    """The run's flow name: annotated by the API's querysets, else read from the flow."""
    name: str | None = getattr(run, "flow_name", None)
    return run.data_flow.name if name is None else name


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
    """A flow: every ``DataFlow`` field plus ``overdue``. What the scheduler, the executor
    and the alerts write (``next_run_at``, ``state``, ...) is read-only.

    Input is checked by the model's own ``full_clean()``, as in the admin: one schedule
    (``cron`` or ``run_interval``), a valid cron and time zone, a configuration that its
    flow's ``configuration_schema`` accepts.
    """

    configuration = JSONObjectField(required=False)
    last_run_status = serializers.ChoiceField(
        choices=RunStatus.choices, read_only=True, allow_blank=True
    )
    overdue = serializers.BooleanField(
        source="is_overdue",
        read_only=True,
        help_text="No successful run for alert_after seconds (never for a disabled flow).",
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
            "cron",
            "timezone",
            "alert_after",
            "alert_emails",
            "disable_after_failures",
            "queue",
            "max_retries",
            "timeout",
            "catchup",
            "upstream_flows",
            "downstream_flows",
            "wait_for",
            "upstream_generation",
            "last_run_at",
            "last_run_status",
            "next_run_at",
            "state",
            "consecutive_failures",
            "overdue_episode_since",
            "overdue",
            "created_at",
            "updated_at",
        )
        read_only_fields = (
            "downstream_flows",
            "upstream_generation",
            "last_run_at",
            "last_run_status",
            "next_run_at",
            "state",
            "consecutive_failures",
            "overdue_episode_since",
            "created_at",
            "updated_at",
        )
        extra_kwargs = {
            # The database columns are 32-bit (16-bit) on every backend; say so, not a 500.
            "run_interval": {"max_value": 2_147_483_647},
            "timeout": {"max_value": 2_147_483_647},
            "alert_after": {"max_value": 2_147_483_647},
            "max_retries": {"max_value": 32_767},
            "disable_after_failures": {"max_value": 32_767},
        }

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """The model's rules across fields (``DataFlow.full_clean()``), on a copy."""
        data_flow = copy.copy(self.instance) if self.instance is not None else DataFlow()
        for name, value in attrs.items():
            if name != "upstream_flows":  # many-to-many: checked below, saved by DRF
                setattr(data_flow, name, value)
        try:
            # Uniqueness is DRF's UniqueValidator's job (it names the field already).
            data_flow.full_clean(validate_unique=False, validate_constraints=False)
            if "upstream_flows" in attrs:
                cycle = dependency_cycle(data_flow, attrs["upstream_flows"])
                if cycle:
                    raise DjangoValidationError({"upstream_flows": cycle_error(cycle)})
        except DjangoValidationError as exc:
            raise serializers.ValidationError(as_serializer_error(exc)) from exc
        return attrs


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
        required=False,
        min_value=1,
        max_value=2**63 - 1,
        help_text="Only this flow's runs (stats/ only).",
    )


class UpcomingQuerySerializer(serializers.Serializer):
    count = serializers.IntegerField(required=False, default=5, min_value=1, max_value=50)


class UpcomingSerializer(serializers.Serializer):
    upcoming = serializers.ListField(child=serializers.DateTimeField())


# -- backfills ----------------------------------------------------------------------------


class BackfillRequestSerializer(serializers.Serializer):
    """The body of ``flows/{id}/backfill/``: the range ``[start, end)`` and the options."""

    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    rerun = serializers.BooleanField(
        required=False, default=False, help_text="Run slots that already succeeded again too."
    )
    force = serializers.BooleanField(
        required=False, default=False, help_text="Allow more than 10,000 slots."
    )


class BackfillSerializer(serializers.ModelSerializer):
    """A backfill and its progress (``done`` of ``total`` slots)."""

    flow = serializers.IntegerField(source="data_flow_id", read_only=True)
    flow_name = serializers.CharField(source="data_flow.name", read_only=True)
    created_by = serializers.IntegerField(source="created_by_id", read_only=True, allow_null=True)

    class Meta:
        model = Backfill
        fields = (
            "id",
            "flow",
            "flow_name",
            "start",
            "end",
            "rerun",
            "status",
            "done",
            "total",
            "next_slot",
            "created_by",
            "created_at",
            "ended_at",
        )
        read_only_fields = fields
