"""The admin's live pages: the run page follows its run, "Live runs", and a dashboard.

:class:`LiveRunAdminMixin` is mixed into the run admin. The run page and "Live runs"
open an ``EventSource`` on the live status streams; the dashboard draws its charts as
server-rendered SVG (:mod:`~django_dataflows.admin.charts`), so it works offline.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, URLPattern, path, reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

import django_dataflows.admin.charts as charts
from django_dataflows.models import DataFlow, DataFlowRun

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse


def stream_url(name: str, *args: Any) -> str | None:
    """The URL of a live stream, wherever the project included ``live.urls``."""
    candidates = (
        f"dataflows_live:{name}",
        f"dataflows:dataflows_live:{name}",
        f"dataflows_api:dataflows_live:{name}",
        f"dataflows:dataflows_api:dataflows_live:{name}",
    )
    for candidate in candidates:
        try:
            return reverse(candidate, args=args)
        except NoReverseMatch:
            continue
    return None


class LiveRunAdminMixin:
    """Adds the live panel to the run page and the "Live runs" and dashboard pages."""

    admin_site: Any
    model: type[DataFlowRun]

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        prefix = f"{self.model._meta.app_label}_{self.model._meta.model_name}"
        return [
            path("live/", wrap(self.live_runs_view), name=f"{prefix}_live"),
            path("dashboard/", wrap(self.dashboard_view), name=f"{prefix}_dashboard"),
            *super().get_urls(),  # type: ignore[misc]
        ]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: DataFlowRun | None = None,
    ) -> HttpResponse:
        response: HttpResponse = super().render_change_form(  # type: ignore[misc]
            request, context, add, change, form_url, obj
        )
        if obj is not None and isinstance(response, TemplateResponse):
            # The run page (with run control's buttons) plus the live panel.
            response.template_name = "admin/dataflows/live/run_change_form.html"
            assert response.context_data is not None
            response.context_data["dataflows_stream_url"] = stream_url("run-events", obj.pk)
        return response

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = {**(extra_context or {}), "dataflows_live_links": True}
        return super().changelist_view(request, context)  # type: ignore[misc, no-any-return]

    def _page_context(self, request: HttpRequest, title: Any) -> dict[str, Any]:
        if not self.has_view_permission(request):  # type: ignore[attr-defined]
            raise PermissionDenied
        return {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.model._meta,
            "has_view_permission": True,
        }

    def live_runs_view(self, request: HttpRequest) -> HttpResponse:
        """Active runs, kept up to date by the ``events/`` stream."""
        context = self._page_context(request, _("Live runs"))
        runs = (
            DataFlowRun.objects.not_deleted()
            .visible_to(request.user)
            .active()
            .select_related("data_flow")
            .order_by("created_at", "pk")
        )
        context.update(
            runs=list(runs[:500]),
            stream_url=stream_url("events"),
            change_url_template=reverse(
                "admin:dataflows_dataflowrun_change", args=[0], current_app=self.admin_site.name
            ),
        )
        return TemplateResponse(request, "admin/dataflows/live/live_runs.html", context)

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        """Charts of the last day and week, drawn on the server as SVG."""
        context = self._page_context(request, _("Data flows dashboard"))
        now = timezone.now()
        runs = DataFlowRun.objects.not_deleted().visible_to(request.user)
        flows = dict(DataFlow.objects.visible_to(request.user).values_list("pk", "name"))
        since = now - timedelta(days=7)
        # Counts and sums of every flow (no histogram); percentiles for the charted few.
        per_flow = runs.stats_per_flow(since=since, percentiles=False)
        slowest = charts.chosen(per_flow, "avg_duration_ms", highest=True)
        slowest_stats = runs.filter(data_flow__in=slowest).stats_per_flow(since=since)
        # The week's hourly counts, read once for both charts.
        week = runs.counts_per_hour(*charts.hour_window(now, 24 * 7))
        context.update(
            day_chart=charts.runs_per_hour(week, now=now, hours=24),
            week_chart=charts.runs_per_hour(week, now=now, hours=24 * 7),
            duration_chart=charts.durations_per_flow(charts.named(slowest_stats, flows, slowest)),
            success_chart=charts.success_rate_per_flow(
                charts.named(per_flow, flows, charts.chosen(per_flow, "success_rate"))
            ),
            overdue=charts.overdue_flows(request.user),
        )
        return TemplateResponse(request, "admin/dataflows/live/dashboard.html", context)
