"""``DataFlowAdmin``: the flow list with its statistics and health box, and the flow page.

Thin on purpose: the actions call :meth:`DataFlow.trigger_run` and :meth:`DataFlow.save`,
and everything else is presentation. The changelist annotates what it shows, so it makes
the same number of queries for five flows as for five thousand.
"""

from __future__ import annotations

from datetime import UTC as datetime_utc
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin, messages
from django.contrib.admin.exceptions import NotRegistered
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import (
    Count,
    F,
    FloatField,
    IntegerField,
    OuterRef,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.functions import Cast, Coalesce, NullIf
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, reverse
from django.urls import path as url_path
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from django_dataflows.backends.sync import run_after_response
from django_dataflows.exceptions import EnqueueFailed, RunAlreadyActive
from django_dataflows.flows import is_registered
from django_dataflows.models import (
    ACTIVE_STATUSES,
    AuditAction,
    DataFlow,
    DataFlowQuerySet,
    DataFlowRun,
    RunStatus,
    RunTrigger,
    may_see_every_flow,
)
from django_dataflows.runs.starting import trigger_run
from django_dataflows.schedules import get_zone, zone_name

from .control import (
    RunWithInputAdminMixin,
)
from .display import (
    BACKTRACE_PERMISSION,
    FAILURE_STATUSES,
    FAILURE_WINDOW,
    RATED_STATUSES,
    RECENT_RUNS_SHOWN,
    SUCCESS_RATE_WINDOW,
    UPCOMING_RUNS_SHOWN,
    _admin_url,
    describe_schedule,
    flow_links,
    flow_stats,
    format_duration,
    format_milliseconds,
    relative_time,
    status_badge,
    upstream_run_links,
)
from .forms import DataFlowForm
from .graph import dependency_graph_svg
from .health import collect_health
from .lists import EXACT_COUNT_LIMIT, sorts_by
from .owners import OwnedFlowsAdminMixin, record

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

    # Generic in django-stubs only; Django's classes are not subscriptable at run time.
    _DataFlowModelAdmin = admin.ModelAdmin[DataFlow]
else:
    _DataFlowModelAdmin = admin.ModelAdmin

# -- DataFlow ---------------------------------------------------------------------------


def _count_recent_runs(since: datetime, statuses: tuple[str, ...]) -> Coalesce:
    """A correlated subquery counting one flow's runs: no join, no GROUP BY on flows."""
    runs = (
        DataFlowRun.objects.filter(
            data_flow=OuterRef("pk"),
            created_at__gte=since,
            status__in=statuses,
            deleted_at__isnull=True,
        )
        .order_by()
        .values("data_flow")
        .annotate(count=Count("pk"))
        .values("count")
    )
    return Coalesce(Subquery(runs, output_field=IntegerField()), Value(0))


@admin.register(DataFlow)
class DataFlowAdmin(OwnedFlowsAdminMixin, RunWithInputAdminMixin, _DataFlowModelAdmin):
    form = DataFlowForm
    list_display = (
        "name",
        "flow_display",
        "enabled",
        "overdue_display",
        "interval_display",
        "last_status",
        "last_run_display",
        "next_run_display",
        "success_rate",
        "p50_display",
        "p95_display",
    )
    list_filter = (
        "enabled",
        "last_run_status",
        "flow",
        ("owner", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = ("name", "description")
    # Each row carries a week of statistics (its success rate and percentiles from a
    # histogram per day): 50 rows a page keep the list near 100 ms however busy the
    # flows are (with 100, 160 ms for flows running every few minutes over 10 M runs).
    list_per_page = 50
    # Thousands of flows would each be an <option> of every flow page; the autocomplete
    # asks this admin for the flows the user sees, a page of results at a time.
    autocomplete_fields = ("upstream_flows",)
    actions = ("run_now", "run_with_input", "backfill", "enable", "disable")
    readonly_fields = (
        "interval_display",
        "overdue_display",
        "consecutive_failures",
        "last_status",
        "last_run_at",
        "next_run_at",
        "created_at",
        "updated_at",
        "statistics_display",
        "downstream_display",
        "generation_display",
    )

    class Media:
        css = {"all": ("django_dataflows/admin.css",)}
        js = ("django_dataflows/schedule_kind.js",)

    def get_fieldsets(self, request: HttpRequest, obj: DataFlow | None = None) -> Any:
        schedule = ["schedule_kind", "run_interval", "cron", "timezone", "catchup"]
        pipeline: list[str] = ["upstream_flows", "wait_for"]
        alerts = ["alert_after", "alert_emails", "disable_after_failures", "max_duration"]
        if obj is not None:
            schedule += ["interval_display", "last_run_at", "last_status", "next_run_at"]
            alerts += ["overdue_display", "consecutive_failures"]
            # Downstream flows may be other teams': named to those who see every flow.
            if may_see_every_flow(request.user):
                pipeline.append("downstream_display")
            pipeline.append("generation_display")
        fieldsets: list[tuple[Any, dict[str, Any]]] = [
            (None, {"fields": ["name", "description", "owner", "flow", "enabled"]}),
            (_("Schedule"), {"fields": schedule}),
            (_("Pipeline"), {"fields": pipeline}),
            (_("Alerts"), {"fields": alerts}),
            (_("Configuration"), {"fields": ["configuration"]}),
            (_("Execution"), {"fields": ["queue", "max_retries", "timeout"]}),
        ]
        if obj is not None:
            fieldsets.append((_("History"), {"fields": ["created_at", "updated_at"]}))
            fieldsets.append((_("Statistics"), {"fields": ["statistics_display"]}))
        return fieldsets

    def get_queryset(self, request: HttpRequest) -> QuerySet[DataFlow]:
        flows = cast(DataFlowQuerySet, super().get_queryset(request)).with_overdue_since()
        if not sorts_by(request, self, "success_rate"):
            return flows  # the column's figures come from the rollups, a page at a time
        # Sorting every flow by it needs the counts of each (they read a week of runs).
        since = timezone.now() - SUCCESS_RATE_WINDOW
        return flows.annotate(
            recent_rated=_count_recent_runs(since, RATED_STATUSES),
            recent_succeeded=_count_recent_runs(since, (RunStatus.SUCCESS,)),
        )

    # -- columns ----------------------------------------------------------------------

    @admin.display(description=_("flow"), ordering="flow")
    def flow_display(self, obj: DataFlow) -> str:
        if is_registered(obj.flow):
            return obj.flow
        return format_html(
            '{} <span class="dataflows-badge dataflows-badge--failed">{}</span>',
            obj.flow,
            gettext("not registered"),
        )

    @admin.display(description=_("schedule"), ordering="run_interval")
    def interval_display(self, obj: DataFlow) -> str:
        return describe_schedule(obj)

    @admin.display(description=_("overdue"))
    def overdue_display(self, obj: DataFlow) -> str:
        if not obj.is_overdue:
            return ""
        since = obj.compute_overdue_since()
        return format_html(
            '<span class="dataflows-badge dataflows-badge--overdue" title="{}">{}</span>',
            gettext("No successful run for %(seconds)s seconds (alert after).")
            % {"seconds": obj.alert_after},
            gettext("overdue since %(when)s")
            % {"when": date_format(timezone.localtime(since), "DATETIME_FORMAT")}
            if since
            else gettext("overdue"),
        )

    @admin.display(description=_("downstream flows"))
    def downstream_display(self, obj: DataFlow) -> str:
        return flow_links(obj.downstream_flows.all()) or gettext("none")

    @admin.display(description=_("latest generation"))
    def generation_display(self, obj: DataFlow) -> str:
        """The flow's latest upstream-triggered run and the upstream runs it took in."""
        run = (
            obj.runs.filter(generation__isnull=False)
            .order_by("-generation")
            .prefetch_related("upstream_runs__data_flow")
            .first()
        )
        if run is None:
            return gettext("none yet")
        return format_html(
            '<a href="{}">{}</a> {} {}',
            reverse("admin:dataflows_dataflowrun_change", args=[run.pk]),
            gettext("generation %(number)s") % {"number": run.generation},
            status_badge(run.status),
            upstream_run_links(run),
        )

    @admin.display(description=_("last status"), ordering="last_run_status")
    def last_status(self, obj: DataFlow) -> str:
        return status_badge(obj.last_run_status)

    @admin.display(description=_("last run"), ordering="last_run_at")
    def last_run_display(self, obj: DataFlow) -> str:
        return relative_time(obj.last_run_at) if obj.last_run_at else gettext("never")

    @admin.display(description=_("next run"), ordering="next_run_at")
    def next_run_display(self, obj: DataFlow) -> str:
        if not obj.enabled:
            return format_html('<span class="dataflows-quiet">{}</span>', gettext("disabled"))
        if obj.next_run_at is None:
            return format_html('<span class="dataflows-quiet">{}</span>', gettext("no schedule"))
        if obj.next_run_at <= timezone.now():
            return format_html(
                '<time datetime="{}">{}</time>', obj.next_run_at.isoformat(), gettext("due now")
            )
        return relative_time(obj.next_run_at)

    @admin.display(
        description=_("success rate (7 days)"),
        ordering=Cast(F("recent_succeeded"), FloatField()) / NullIf(F("recent_rated"), Value(0)),
    )
    def success_rate(self, obj: DataFlow) -> str:
        stats = flow_stats(obj)
        rated = stats["success"] + stats["failed"] + stats["timed_out"] if stats else 0
        if not stats or stats["success_rate"] is None:
            return format_html('<span class="dataflows-quiet">{}</span>', gettext("no runs"))
        return format_html(
            '<span title="{}">{}%</span>',
            gettext(
                "%(succeeded)d of the %(rated)d runs finished in the last 7 days succeeded "
                "(cancelled runs are not counted)."
            )
            % {"succeeded": stats["success"], "rated": rated},
            round(stats["success_rate"]),
        )

    @admin.display(description=_("p50 (7 days)"))
    def p50_display(self, obj: DataFlow) -> str:
        stats = flow_stats(obj)
        return format_milliseconds(stats["p50_duration_ms"] if stats else None)

    @admin.display(description=_("p95 (7 days)"))
    def p95_display(self, obj: DataFlow) -> str:
        stats = flow_stats(obj)
        return format_milliseconds(stats["p95_duration_ms"] if stats else None)

    @admin.display(description=_("statistics"))
    def statistics_display(self, obj: DataFlow) -> str:
        since = timezone.now() - SUCCESS_RATE_WINDOW
        rows = (
            (gettext("last 7 days"), obj.runs.stats(since=since)),
            (gettext("all time"), obj.runs.stats()),
        )
        return format_html(
            '<table class="dataflows-stats"><thead><tr><th></th><th>{}</th><th>{}</th>'
            "<th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>{}</tbody></table>",
            gettext("runs"),
            gettext("success rate"),
            gettext("p50"),
            gettext("p95"),
            gettext("max"),
            format_html_join(
                "",
                "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (
                        label,
                        stats["total"],
                        "-" if stats["success_rate"] is None else f"{stats['success_rate']:g}%",
                        format_milliseconds(stats["p50_duration_ms"]),
                        format_milliseconds(stats["p95_duration_ms"]),
                        format_milliseconds(stats["max_duration_ms"]),
                    )
                    for label, stats in rows
                ),
            ),
        )

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        """Attach each listed flow's statistics, for the whole page in at most two queries."""
        changelist = super().get_changelist_instance(request)
        flows = list(changelist.result_list)  # evaluated once; the template reuses it
        stats = DataFlowRun.objects.filter(
            data_flow__in=[flow.pk for flow in flows]
        ).stats_per_flow(since=timezone.now() - SUCCESS_RATE_WINDOW)
        for flow in flows:
            flow.dataflows_stats = stats.get(flow.pk)
        return changelist

    # -- actions ----------------------------------------------------------------------

    @admin.action(description=_("Run now"), permissions=["run"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[DataFlow]) -> None:
        run_after_response()  # with the in-process backend: answer first, then run
        for data_flow in queryset:
            if not self.has_run_permission(request, data_flow):
                self._refuse(request, data_flow)
                continue
            try:
                run = trigger_run(
                    data_flow,
                    trigger=RunTrigger.MANUAL,
                    user=request.user,
                    on_recorded=lambda run: record(request, AuditAction.RUN_STARTED, run=run),
                )
            except (RunAlreadyActive, EnqueueFailed) as exc:
                self.message_user(
                    request,
                    gettext("“%(name)s” was not run: %(error)s")
                    % {"name": data_flow.name, "error": exc},
                    messages.ERROR,
                )
                continue
            self._report_run(request, data_flow, run)

    def _refuse(self, request: HttpRequest, data_flow: DataFlow) -> None:
        self.message_user(
            request,
            gettext("You may not change “%(name)s”.") % {"name": data_flow.name},
            messages.ERROR,
        )

    def _report_run(self, request: HttpRequest, data_flow: DataFlow, run: DataFlowRun) -> None:
        link = format_html(
            '<a href="{}">{}</a>',
            _admin_url("dataflowrun_change", run.pk, site=self.admin_site),
            gettext("run %(id)s") % {"id": run.pk},
        )
        if run.status == RunStatus.SUCCESS:
            message = format_html(
                gettext("“{name}”: {run} succeeded."), name=data_flow.name, run=link
            )
            level = messages.SUCCESS
        elif run.status in FAILURE_STATUSES or run.status == RunStatus.CANCELLED:
            message = format_html(
                gettext("“{name}”: {run} {status}: {error}"),
                name=data_flow.name,
                run=link,
                status=run.get_status_display().lower(),
                error=run.error_message,
            )
            level = messages.ERROR
        else:  # an asynchronous backend has it, or it starts when the transaction commits
            message = format_html(gettext("“{name}”: {run} queued."), name=data_flow.name, run=link)
            level = messages.INFO
        self.message_user(request, message, level)

    def get_urls(self) -> list[URLPattern]:
        return [
            url_path(
                "graph/",
                self.admin_site.admin_view(self.graph_view),
                name="dataflows_dataflow_graph",
            ),
            *super().get_urls(),
        ]

    def graph_view(self, request: HttpRequest) -> HttpResponse:
        """Every flow with upstream or downstream flows, as a server-rendered SVG graph."""
        # The graph names every flow in a pipeline: for users who see every flow.
        if not self.has_view_permission(request) or not may_see_every_flow(request.user):
            raise PermissionDenied
        svg, alone = dependency_graph_svg(
            lambda pk: _admin_url("dataflow_change", pk, site=self.admin_site)
        )
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Flow dependencies"),
            "opts": self.opts,
            "graph": svg,
            "alone": alone,
        }
        return TemplateResponse(request, "admin/dataflows/dataflow/graph.html", context)

    @admin.action(description=_("Backfill past slots…"), permissions=["run"])
    def backfill(self, request: HttpRequest, queryset: QuerySet[DataFlow]) -> HttpResponse:
        """Open the new-backfill form for the first selected flow."""
        data_flow = queryset.order_by("name").first()
        query = {"data_flow": str(data_flow.pk)} if data_flow is not None else None
        return HttpResponseRedirect(_admin_url("backfill_add", site=self.admin_site, query=query))

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[Any], dict[str, int], set[str], list[Any]]:
        """The delete pages refuse a flow with an active run, as the model does.

        Each such flow's active run is listed as what protects it, so the confirmation page
        says why and offers no "Yes"; ``DataFlow.delete()`` refuses it anyway.
        """
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        pks = [obj.pk for obj in objs]
        active = DataFlowRun.objects.active().filter(data_flow__in=pks).select_related("data_flow")
        protected = list(protected) + [
            format_html(
                gettext("{run}: still {status}; cancel it or wait for it to finish"),
                run=str(run),
                status=run.get_status_display().lower(),
            )
            for run in active
        ]
        return deleted, counts, perms_needed, protected

    def has_enable_permission(self, request: HttpRequest) -> bool:
        """Enabling makes the heartbeat start runs: it needs change and run permissions."""
        return self.has_change_permission(request) and self.has_run_permission(request)

    def get_form(
        self, request: HttpRequest, obj: DataFlow | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        # The form refuses making the flow due for a user who may not run it, and offers as
        # upstream flows only the flows this user sees.
        upstream_choices = DataFlow.objects.visible_to(request.user).order_by("name")
        attributes = {
            "may_run": self.has_run_permission(request),
            "upstream_choices": upstream_choices,
        }
        return type(form.__name__, (form,), attributes)

    @admin.action(description=_("Enable"), permissions=["enable"])
    def enable(self, request: HttpRequest, queryset: QuerySet[DataFlow]) -> None:
        count = self._set_enabled(request, queryset, enabled=True)
        self.message_user(
            request,
            ngettext(
                "%(count)d data flow was enabled.", "%(count)d data flows were enabled.", count
            )
            % {"count": count},
            messages.SUCCESS,
        )

    @admin.action(description=_("Disable"), permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[DataFlow]) -> None:
        count = self._set_enabled(request, queryset, enabled=False)
        self.message_user(
            request,
            ngettext(
                "%(count)d data flow was disabled.", "%(count)d data flows were disabled.", count
            )
            % {"count": count},
            messages.SUCCESS,
        )

    def _set_enabled(
        self, request: HttpRequest, queryset: QuerySet[DataFlow], *, enabled: bool
    ) -> int:
        # One set_enabled() per flow, never queryset.update(): it recomputes next_run_at.
        changed = 0
        label = str(DataFlow._meta.get_field("enabled").verbose_name)
        with transaction.atomic():
            for data_flow in queryset.filter(enabled=not enabled):
                if not self.has_change_permission(request, data_flow):
                    self._refuse(request, data_flow)
                    continue
                data_flow.set_enabled(enabled)
                self.log_change(request, data_flow, [{"changed": {"fields": [label]}}])
                action = AuditAction.FLOW_ENABLED if enabled else AuditAction.FLOW_DISABLED
                record(request, action, data_flow=data_flow)
                changed += 1
        return changed

    # -- pages ------------------------------------------------------------------------

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = {**(extra_context or {}), "dataflows_health": collect_health()}
        if self._can_view_runs(request):
            extra_context["dataflows_runs_links"] = {
                "active": _admin_url(
                    "dataflowrun_changelist",
                    site=self.admin_site,
                    query={"status__in": ",".join(ACTIVE_STATUSES)},
                ),
                "failures": _admin_url(
                    "dataflowrun_changelist",
                    site=self.admin_site,
                    query={
                        "status__in": ",".join(FAILURE_STATUSES),
                        "ended_at__gte": (timezone.now() - FAILURE_WINDOW).isoformat(),
                    },
                ),
            }
        return super().changelist_view(request, extra_context)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: DataFlow | None = None,
    ) -> HttpResponse:
        if obj is not None and obj.pk is not None:
            context.update(self._history_context(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _history_context(self, request: HttpRequest, obj: DataFlow) -> dict[str, Any]:
        can_view_runs = self._can_view_runs(request)
        runs = obj.runs.select_related("triggered_by")[:RECENT_RUNS_SHOWN]
        now = timezone.now()
        return {
            "dataflows_history": True,
            "recent_runs": [
                {"run": run, "duration": format_duration(run.duration)} for run in runs
            ],
            # Bounded: a busy flow has hundreds of thousands of runs.
            "run_count": obj.runs.order_by()[: EXACT_COUNT_LIMIT + 1].count(),
            "run_count_limit": EXACT_COUNT_LIMIT,
            "can_view_runs": can_view_runs,
            "can_view_backtraces": request.user.has_perm(BACKTRACE_PERMISSION),
            "run_history_url": _admin_url(
                "dataflowrun_changelist",
                site=self.admin_site,
                query={"data_flow__id__exact": str(obj.pk)},
            )
            if can_view_runs
            else None,
            "upcoming_runs": [
                (moment, relative_time(moment, now), *_in_zone_and_utc(obj, moment))
                for moment in obj.upcoming_runs(UPCOMING_RUNS_SHOWN, now=now)
            ],
            "schedule_error": obj.schedule_error,
        }

    def _can_view_runs(self, request: HttpRequest) -> bool:
        try:
            run_admin = self.admin_site.get_model_admin(DataFlowRun)
        except NotRegistered:  # a project that hides the run history
            return False
        return run_admin.has_view_permission(request)


def _in_zone_and_utc(data_flow: DataFlow, moment: datetime) -> tuple[str, str]:
    """``moment`` on the flow's wall clock (its zone named) and in UTC."""
    if data_flow.cron:  # upcoming_runs() is empty when the zone is invalid
        label = zone_name(data_flow.timezone)
        local = moment.astimezone(get_zone(data_flow.timezone))
    else:
        label = timezone.get_current_timezone_name()
        local = timezone.localtime(moment)
    return (
        f"{local:%Y-%m-%d %H:%M %Z} ({label})",
        f"{moment.astimezone(datetime_utc):%Y-%m-%d %H:%M} UTC",
    )
