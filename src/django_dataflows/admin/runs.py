"""``DataFlowRunAdmin``: the run list (bounded counts, indexed filters) and the run page."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db.models import (
    QuerySet,
)
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from django_dataflows.models import (
    DataFlowRun,
)

from .control import (
    DataFlowRunStepInline,
    RunControlAdminMixin,
    progress_html,
)
from .display import (
    BACKTRACE_PERMISSION,
    _admin_url,
    format_duration,
    pretty_json,
    status_badge,
    upstream_run_links,
)
from .lists import (
    BoundedCountPaginator,
    CreatedWithinFilter,
    FlowFilter,
)
from .live import LiveRunAdminMixin
from .logs import RunLogAdminMixin
from .owners import OwnedRunsAdminMixin

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

    # Generic in django-stubs only; Django's classes are not subscriptable at run time.
    _DataFlowRunModelAdmin = admin.ModelAdmin[DataFlowRun]
else:
    _DataFlowRunModelAdmin = admin.ModelAdmin

# -- DataFlowRun ------------------------------------------------------------------------


class DeletedRunsFilter(admin.SimpleListFilter):
    """Soft-deleted runs are hidden unless asked for; they stay until ``dataflows_prune``."""

    title = _("deleted")
    parameter_name = "deleted"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", gettext("Deleted only")), ("all", gettext("All, deleted included"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(deleted_at__isnull=False)
        if self.value() == "all":
            return queryset
        return queryset.filter(deleted_at__isnull=True)

    def choices(self, changelist: Any) -> Any:
        choices = iter(super().choices(changelist))
        default = next(choices)  # Django calls it "All"; here it hides deleted runs
        default["display"] = gettext("Not deleted")
        yield default
        yield from choices


@admin.register(DataFlowRun)
class DataFlowRunAdmin(
    RunLogAdminMixin,
    OwnedRunsAdminMixin,
    LiveRunAdminMixin,
    RunControlAdminMixin,
    _DataFlowRunModelAdmin,
):
    """The run history: read-only; only superusers may delete runs.

    Users with ``dataflows.run_dataflow`` may cancel, pause, resume and retry runs (actions,
    and buttons on the run page).
    """

    list_display = (
        "id",
        "flow_link",
        "status_display",
        "progress_display",
        "trigger",
        "triggered_by",
        "created_at",
        "started_at",
        "ended_at",
        "duration_display",
        "attempt",
    )
    list_display_links = ("id",)
    list_filter = ("status", "trigger", FlowFilter, CreatedWithinFilter, DeletedRunsFilter)
    list_select_related = ("data_flow", "triggered_by")
    search_fields = ("data_flow__name", "error_message", "task_id")
    # No date hierarchy and no count of the whole table: both read every run.
    paginator = BoundedCountPaginator
    show_full_result_count = False
    actions = ("cancel_runs", "pause_runs", "resume_runs", "retry_runs")
    inlines = (DataFlowRunStepInline,)
    readonly_fields = (
        "input_display",
        "progress_display",
        "cancel_requested_at",
        "pause_requested_at",
        "flow_link",
        "status_display",
        "trigger",
        "triggered_by",
        "attempt",
        "scheduled_for",
        "created_at",
        "started_at",
        "ended_at",
        "duration_display",
        "error_message",
        "backtrace",
        "result_display",
        "queue",
        "task_id",
        "started_by_display",
    )

    class Media:
        css = {"all": ("django_dataflows/admin.css",)}

    @admin.display(description=_("started by"))
    def started_by_display(self, obj: DataFlowRun) -> str:
        """What started the run: its upstream runs, its backfill, its schedule slot."""
        parts = []
        links = upstream_run_links(obj)
        if links:
            parts.append(
                format_html("{} {}", gettext("generation %(n)s,") % {"n": obj.generation}, links)
            )
        if obj.backfill_id is not None:
            parts.append(
                format_html(
                    '<a href="{}">{}</a>',
                    _admin_url("backfill_change", obj.backfill_id, site=self.admin_site),
                    gettext("backfill %(id)s") % {"id": obj.backfill_id},
                )
            )
        if obj.scheduled_for is not None:
            parts.append(
                format_html(
                    '{} <time datetime="{}">{}</time>',
                    gettext("slot"),
                    obj.scheduled_for.isoformat(),
                    date_format(timezone.localtime(obj.scheduled_for), "DATETIME_FORMAT"),
                )
            )
        return format_html_join("; ", "{}", ((part,) for part in parts)) or "-"

    def get_fieldsets(self, request: HttpRequest, obj: DataFlowRun | None = None) -> Any:
        outcome = ["error_message", "backtrace", "result_display"]
        if not request.user.has_perm(BACKTRACE_PERMISSION):
            outcome.remove("backtrace")
        return [
            (
                None,
                {
                    "fields": [
                        "flow_link",
                        "status_display",
                        "trigger",
                        "started_by_display",
                        "triggered_by",
                        "attempt",
                    ]
                },
            ),
            (
                _("Timing"),
                {
                    "fields": [
                        "scheduled_for",
                        "created_at",
                        "started_at",
                        "ended_at",
                        "duration_display",
                    ]
                },
            ),
            (_("Input and progress"), {"fields": ["input_display", "progress_display"]}),
            (_("Outcome"), {"fields": outcome}),
            (_("Control"), {"fields": ["cancel_requested_at", "pause_requested_at"]}),
            (_("Backend"), {"fields": ["queue", "task_id"]}),
            *self.run_log_fieldsets(),
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
        if obj is not None and obj.pk is not None:
            context.update(self.run_controls_context(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DataFlowRun | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DataFlowRun | None = None) -> bool:
        return bool(request.user.is_superuser)

    @admin.display(description=_("data flow"), ordering="data_flow__name")
    def flow_link(self, obj: DataFlowRun) -> str:
        return format_html(
            '<a href="{}">{}</a>',
            _admin_url("dataflow_change", obj.data_flow_id, site=self.admin_site),
            obj.data_flow.name,
        )

    @admin.display(description=_("status"), ordering="status")
    def status_display(self, obj: DataFlowRun) -> str:
        return status_badge(obj.status)

    @admin.display(description=_("duration"))
    def duration_display(self, obj: DataFlowRun) -> str:
        return format_duration(obj.duration) or "-"

    @admin.display(description=_("error backtrace"))
    def backtrace(self, obj: DataFlowRun) -> str:
        if not obj.error_backtrace:
            return "-"
        return format_html('<pre class="dataflows-pre">{}</pre>', obj.error_backtrace)

    @admin.display(description=_("input"))
    def input_display(self, obj: DataFlowRun) -> str:
        if not obj.input:
            return "-"
        return format_html('<pre class="dataflows-pre">{}</pre>', pretty_json(obj.input))

    @admin.display(description=_("progress"))
    def progress_display(self, obj: DataFlowRun) -> str:
        return progress_html(obj.progress)

    @admin.display(description=_("result"))
    def result_display(self, obj: DataFlowRun) -> str:
        if obj.result is None:
            return "-"
        return format_html('<pre class="dataflows-pre">{}</pre>', pretty_json(obj.result))
