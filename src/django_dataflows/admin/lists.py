"""Admin lists that cost the same at ten million runs as at a hundred thousand.

Django's change list counts its rows (twice when filtered) and a date hierarchy sorts the
distinct years of the whole table: both read every run. Here the count is bounded and,
past the bound, estimated; the time filter is a range on the indexed ``created_at``.
"""

from __future__ import annotations

import json
from datetime import timedelta
from functools import cached_property
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ORDER_VAR
from django.core.paginator import Page, Paginator
from django.db import connections
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_dataflows.models import DataFlow

#: Up to this many rows a list is counted exactly; beyond, the count is an estimate.
EXACT_COUNT_LIMIT = 10_000


class BoundedCountPaginator(Paginator):  # type: ignore[type-arg]
    """Counts at most ``EXACT_COUNT_LIMIT`` rows; beyond that, PostgreSQL's estimate.

    The estimate is the planner's row count for the list's query (``EXPLAIN``), which
    costs no more than planning it; elsewhere the count stops at the limit. Either way
    every page up to the count can be opened.

    A page far into the list first finds its rows' keys alone (the run table's
    ``(created_at, id)`` index answers without reading the rows it skips), then loads
    those rows with their joins: skipping 100,000 rows costs an index scan, not 100,000
    rows read and joined.
    """

    def page(self, number: Any) -> Any:
        queryset = self.object_list
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        if not isinstance(queryset, QuerySet) or bottom < self.per_page:
            return super().page(number)
        top = bottom + self.per_page
        if top + self.orphans >= self.count:
            top = self.count
        keys = list(queryset.values_list("pk", flat=True)[bottom:top])
        return Page(queryset.filter(pk__in=keys), number, self)

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return len(queryset)
        bounded = queryset.order_by()[: EXACT_COUNT_LIMIT + 1].count()
        if bounded <= EXACT_COUNT_LIMIT:
            return bounded
        return max(bounded, _estimated_rows(queryset) or 0)


def _estimated_rows(queryset: QuerySet[Any]) -> int | None:
    """The planner's estimate of the rows ``queryset`` selects (PostgreSQL), else ``None``."""
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return None
    sql, params = queryset.order_by().values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        (plan,) = cursor.fetchone()
    if isinstance(plan, str):  # pragma: no cover - psycopg decodes JSON already
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


class CreatedWithinFilter(admin.SimpleListFilter):
    """Runs created within the last hour, day, week or month: a range on an index."""

    title = _("created")
    parameter_name = "created_within"
    WINDOWS = {
        "1h": (_("Last hour"), timedelta(hours=1)),
        "24h": (_("Last 24 hours"), timedelta(hours=24)),
        "7d": (_("Last 7 days"), timedelta(days=7)),
        "30d": (_("Last 30 days"), timedelta(days=30)),
    }

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [(key, label) for key, (label, _window) in self.WINDOWS.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        window = self.WINDOWS.get(self.value() or "")
        if window is None:
            return queryset
        return queryset.filter(created_at__gte=timezone.now() - window[1])


class FlowFilter(admin.SimpleListFilter):
    """Runs of one flow, choosing among at most ``FLOWS_LISTED`` flows by name.

    The list filter of a foreign key lists every flow, loading each in full: two thousand
    flows cost half a second per page. Any flow can still be chosen from its own page
    (its "whole history" link) or by searching for its name.
    """

    title = _("data flow")
    parameter_name = "data_flow__id__exact"
    FLOWS_LISTED = 50

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        # Only the flows this user sees (an owner's own, without the model permissions).
        visible = DataFlow.objects.visible_to(request.user)
        flows = visible.order_by("name").values_list("pk", "name")
        shown = [(str(pk), name) for pk, name in flows[: self.FLOWS_LISTED]]
        chosen = self.value()
        if chosen and chosen.isdigit() and chosen not in {pk for pk, _name in shown}:
            shown += [
                (str(pk), name) for pk, name in visible.filter(pk=chosen).values_list("pk", "name")
            ]
        return shown

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if not value:
            return queryset
        if not value.isdigit():
            return queryset.none()
        return queryset.filter(data_flow_id=int(value))


def sorts_by(request: HttpRequest, model_admin: Any, name: str) -> bool:
    """Whether the change list's ordering (the ``o`` parameter) includes column ``name``.

    A column whose sort needs an expensive annotation asks this first, so the list pays
    for it only when sorted by it. The parameter counts the change list's columns, the
    action checkbox first when there are actions.
    """
    columns = list(model_admin.get_list_display(request))
    if model_admin.get_actions(request):
        columns.insert(0, "action_checkbox")
    for part in request.GET.get(ORDER_VAR, "").split("."):
        index = part.rpartition("-")[2]
        if index.isdigit() and int(index) < len(columns) and columns[int(index)] == name:
            return True
    return False
