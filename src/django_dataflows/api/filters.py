"""List filters and ordering (django-filter): a bad value is a 400 naming the parameter."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import django_filters
from django import forms
from django.core.exceptions import ValidationError
from django.db.models import F, OrderBy, QuerySet
from django.utils import timezone
from django_filters.fields import IsoDateTimeField
from rest_framework.exceptions import ValidationError as APIValidationError

from django_dataflows.models import (
    AuditAction,
    AuditEntry,
    AuditSource,
    DataFlow,
    DataFlowRun,
    RunStatus,
    RunTrigger,
)

#: The orderings of the run list; a tie-breaker on the id keeps pages stable.
RUN_ORDERING_FIELDS = ("created_at", "started_at", "ended_at", "duration_ms")
DEFAULT_RUN_ORDERING = "-created_at"


#: The largest id a 64-bit primary key column holds; larger ones are a 400, not a crash.
MAX_ID = 2**63 - 1


class IdFilter(django_filters.Filter):
    """A row id: a whole number from 1 to the largest 64-bit integer."""

    field_class = forms.IntegerField

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_ID)
        super().__init__(*args, **kwargs)


class UTCIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 instant, converted to UTC.

    Python accepts offsets up to ±23:59, PostgreSQL only up to ±15:59: passing the offset
    through would turn a valid instant into a database error.
    """

    def to_python(self, value: Any) -> datetime | None:
        moment: datetime | None = super().to_python(value)
        if moment is None or timezone.is_naive(moment):
            return moment
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            raise ValidationError("This date and time is out of range.", code="overflow") from None


class InstantFilter(django_filters.IsoDateTimeFilter):
    field_class = UTCIsoDateTimeField


class StatusListField(forms.CharField):
    """``status=failed,timed_out``: a comma-separated list of run statuses."""

    def clean(self, value: Any) -> list[str]:
        text = super().clean(value)
        if not text:
            return []
        statuses = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [status for status in statuses if status not in RunStatus.values]
        if unknown:
            raise ValidationError(
                "Unknown status %(unknown)s; use a comma-separated list of: %(valid)s.",
                code="invalid_choice",
                params={"unknown": ", ".join(unknown), "valid": ", ".join(RunStatus.values)},
            )
        return statuses


class StatusListFilter(django_filters.Filter):
    field_class = StatusListField

    def filter(self, qs: QuerySet[Any], value: list[str]) -> QuerySet[Any]:
        return qs.filter(status__in=value) if value else qs


class RunOrderingFilter(django_filters.OrderingFilter):
    """Fields ascending or (with ``-``) descending, empty values last; the id breaks ties.

    Empty values go last both ways, so every database orders the same (PostgreSQL and
    SQLite disagree on where NULL sorts by default).
    """

    def filter(self, qs: QuerySet[Any], value: list[str] | None) -> QuerySet[Any]:
        orderings = list(value or [DEFAULT_RUN_ORDERING])
        expressions: list[OrderBy] = []
        for ordering in orderings:
            name = ordering.removeprefix("-")
            descending = ordering.startswith("-")
            # Only nullable columns need it; NULLS LAST on created_at would keep PostgreSQL
            # from reading its indexes backwards.
            model_field: Any = DataFlowRun._meta.get_field(name)
            if model_field.generated:  # duration_ms: nullable as its output field is
                model_field = model_field.output_field
            nulls_last = True if model_field.null else None
            column = F(name)
            expressions.append(
                column.desc(nulls_last=nulls_last)
                if descending
                else column.asc(nulls_last=nulls_last)
            )
        tie_breaker = F("pk").desc() if orderings[-1].startswith("-") else F("pk").asc()
        return qs.order_by(*expressions, tie_breaker)


class DataFlowFilterSet(django_filters.FilterSet):
    enabled = django_filters.TypedChoiceFilter(
        choices=(("true", "true"), ("false", "false")),
        coerce=lambda value: value == "true",
        help_text="Only enabled (true) or disabled (false) flows.",
    )
    search = django_filters.CharFilter(
        field_name="name", lookup_expr="icontains", help_text="Part of the flow's name."
    )
    owner = django_filters.CharFilter(
        method="filter_owner", help_text="A user id, or 'me' for the flows you own."
    )

    class Meta:
        model = DataFlow
        fields = ("enabled", "search", "owner")

    def filter_owner(self, queryset: QuerySet[Any], name: str, value: str) -> QuerySet[Any]:
        return queryset.filter(owner_id=owner_id(value, self.request))


def owner_id(value: str, request: Any) -> int:
    """``owner=``: a user id, or ``me`` (the authenticated user); else a 400 naming it."""
    text = value.strip()
    if text == "me":
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            raise APIValidationError({"owner": ["'me' needs an authenticated user."]})
        return int(user.pk)
    if not text.isdigit() or not 1 <= int(text) <= MAX_ID:
        raise APIValidationError({"owner": ["Enter a user id or 'me'."]})
    return int(text)


class AuditEntryFilterSet(django_filters.FilterSet):
    flow = IdFilter(field_name="data_flow_id", help_text="A flow id.")
    actor = IdFilter(field_name="actor_id", help_text="A user id.")
    action = django_filters.ChoiceFilter(choices=AuditAction.choices)
    source = django_filters.ChoiceFilter(choices=AuditSource.choices)
    after = InstantFilter(
        field_name="created_at", lookup_expr="gte", help_text="At or after (ISO 8601)."
    )
    before = InstantFilter(
        field_name="created_at", lookup_expr="lt", help_text="Before (ISO 8601)."
    )

    class Meta:
        model = AuditEntry
        fields = ("flow", "actor", "action", "source", "after", "before")


class DataFlowRunFilterSet(django_filters.FilterSet):
    flow = IdFilter(field_name="data_flow_id", help_text="A flow id.")
    status = StatusListFilter(
        help_text=f"One status or a comma-separated list: {', '.join(RunStatus.values)}."
    )
    trigger = django_filters.ChoiceFilter(choices=RunTrigger.choices)
    triggered_by = IdFilter(field_name="triggered_by_id", help_text="A user id.")
    created_after = InstantFilter(
        field_name="created_at", lookup_expr="gte", help_text="Created at or after (ISO 8601)."
    )
    created_before = InstantFilter(
        field_name="created_at", lookup_expr="lt", help_text="Created before (ISO 8601)."
    )
    ordering = RunOrderingFilter(
        fields=RUN_ORDERING_FIELDS,
        help_text="created_at, started_at, ended_at or duration_ms; '-' for descending. "
        f"Default {DEFAULT_RUN_ORDERING}.",
    )

    class Meta:
        model = DataFlowRun
        fields = (
            "flow",
            "status",
            "trigger",
            "triggered_by",
            "created_after",
            "created_before",
            "ordering",
        )
