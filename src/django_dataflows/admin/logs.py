"""The run page's log tail and cost, for :class:`~django_dataflows.admin.DataFlowRunAdmin`.

The tail shows the last lines when the page opens; while the run is active, a small script
asks for the lines after the last one shown (a JSON view of this admin) every two seconds,
and stops when the run has ended and every line is shown.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import Http404, HttpRequest, JsonResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from django_dataflows.models import DataFlowRun, DataFlowRunLog
from django_dataflows.runlogs import LOG_PAGE_SIZE, log_lines

#: Lines the run page shows when it opens.
TAIL_LINES = 200


def _line_payload(line: DataFlowRunLog) -> dict[str, Any]:
    return {
        "position": line.position,
        "created_at": line.created_at.isoformat(),
        "level": line.level,
        "logger": line.logger,
        "step": line.step,
        "message": line.message,
    }


def _line_text(line: DataFlowRunLog) -> str:
    step = f" [{line.step}]" if line.step else ""
    return f"{line.created_at:%H:%M:%S} {line.level:<8} {line.logger}{step}: {line.message}"


class RunLogAdminMixin:
    """Adds the ``Cost`` and ``Log`` sections to the run page, and the log's JSON view."""

    admin_site: Any
    model: type[DataFlowRun]

    def get_urls(self) -> list[URLPattern]:
        prefix = f"{self.model._meta.app_label}_{self.model._meta.model_name}"
        return [
            path(
                "<path:object_id>/logs/",
                self.admin_site.admin_view(self.run_log_view),
                name=f"{prefix}_logs",
            ),
            *super().get_urls(),  # type: ignore[misc]
        ]

    @property
    def media(self) -> forms.Media:
        base: forms.Media = super().media  # type: ignore[misc]
        return base + forms.Media(js=["django_dataflows/runlog.js"])

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = super().get_readonly_fields(request, obj)  # type: ignore[misc]
        return (*fields, "cost_display", "late_display", "log_tail")

    @staticmethod
    def run_log_fieldsets() -> list[tuple[Any, dict[str, Any]]]:
        """The sections this adds to the run page's fieldsets."""
        return [
            (_("Cost"), {"fields": ["cost_display", "late_display"]}),
            (_("Log"), {"fields": ["log_tail"], "classes": ["dataflows-log"]}),
        ]

    def run_log_view(self, request: HttpRequest, object_id: str) -> JsonResponse:
        """``?after=<position>``: the lines after it, as the API's ``runs/{id}/logs/``."""
        run = self.get_object(request, object_id)  # type: ignore[attr-defined]
        if run is None or not self.has_view_permission(request, run):  # type: ignore[attr-defined]
            raise Http404
        try:
            after = max(0, int(request.GET.get("after", 0)))
        except ValueError:
            return JsonResponse({"detail": "after must be a whole number."}, status=400)
        found = log_lines(run.pk, after=after)
        return JsonResponse(
            {
                "results": [_line_payload(line) for line in found],
                "after": found[-1].position if found else after,
                "complete": not run.is_active and len(found) < LOG_PAGE_SIZE,
            }
        )

    @admin.display(description=_("cost"))
    def cost_display(self, obj: DataFlowRun) -> str:
        if obj.cpu_time_ms is None and obj.db_queries is None:
            return "-"
        return format_html(
            "{} ms CPU · {} database queries", obj.cpu_time_ms or 0, obj.db_queries or 0
        )

    @admin.display(description=_("late"))
    def late_display(self, obj: DataFlowRun) -> str:
        if obj.late_since is None:
            return "-"
        return format_html(
            '<span class="dataflows-badge dataflows-badge-late">{}</span> {}',
            _("late"),
            _("past the flow's max duration (%(seconds)s s) since %(when)s")
            % {"seconds": obj.data_flow.max_duration, "when": obj.late_since},
        )

    @admin.display(description=_("log"))
    def log_tail(self, obj: DataFlowRun) -> str:
        tail = list(DataFlowRunLog.objects.filter(run=obj).order_by("-position")[:TAIL_LINES])
        tail.reverse()
        url = reverse(
            f"{self.admin_site.name}:{obj._meta.app_label}_{obj._meta.model_name}_logs",
            args=[obj.pk],
        )
        lines = format_html_join("\n", "{}", ((_line_text(line),) for line in tail))
        return format_html(
            '<pre class="dataflows-pre" id="dataflows-run-log" data-url="{}" data-after="{}" '
            'data-active="{}">{}</pre>',
            url,
            tail[-1].position if tail else 0,
            "1" if obj.is_active else "",
            lines or _("Nothing logged yet."),
        )
