"""Run control in the admin: run actions and buttons, "Run with input…", the step inline.

Thin, like the rest of the admin: every control calls :class:`FlowExecutor` (or
``trigger_run``) and reports what happened. All of it needs the custom permission
``dataflows.run_dataflow`` ("Can run data flows and control their runs").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from django_dataflows.backends.sync import run_after_response
from django_dataflows.exceptions import (
    EnqueueFailed,
    InvalidRunState,
    RunAlreadyActive,
)
from django_dataflows.executor import FlowExecutor
from django_dataflows.flows import is_registered
from django_dataflows.models import (
    AuditAction,
    DataFlow,
    DataFlowRun,
    DataFlowRunStep,
    RunStatus,
    RunTrigger,
)
from django_dataflows.permissions import RUN_PERMISSION  # "Run now", run control
from django_dataflows.runs.starting import trigger_run
from django_dataflows.runs.transitions import allowed_actions
from django_dataflows.validators import load_json_text, validate_run_input

from .owners import record

if TYPE_CHECKING:
    from django.db.models import QuerySet
    from django.http import HttpRequest, HttpResponse
    from django.urls import URLPattern

    _DataFlowModelAdmin = admin.ModelAdmin[DataFlow]
    _DataFlowRunModelAdmin = admin.ModelAdmin[DataFlowRun]
    _StepInline = admin.TabularInline[DataFlowRunStep, DataFlowRun]
else:
    _DataFlowModelAdmin = _DataFlowRunModelAdmin = admin.ModelAdmin
    _StepInline = admin.TabularInline

#: The run controls, in the order the run page shows them.
#: What each control is called in the audit trail.
AUDIT_ACTIONS = {
    "cancel": AuditAction.RUN_CANCELLED,
    "pause": AuditAction.RUN_PAUSED,
    "resume": AuditAction.RUN_RESUMED,
    "retry": AuditAction.RUN_RETRIED,
}

CONTROLS: dict[str, Callable[..., DataFlowRun]] = {
    "cancel": FlowExecutor.cancel,
    "pause": FlowExecutor.pause,
    "resume": FlowExecutor.resume,
    "retry": FlowExecutor.retry,
}
CONTROL_LABELS = {
    "cancel": _("Cancel"),
    "pause": _("Pause"),
    "resume": _("Resume"),
    "retry": _("Retry"),
}


def available_controls(run: DataFlowRun) -> list[str]:
    """The controls that the run's state allows now (what the run page offers).

    Read from the transitions' table, as the executor's refusals are.
    """
    return allowed_actions(run)


def describe_outcome(action: str, run: DataFlowRun, returned: DataFlowRun) -> str:
    """What an operator is told after ``action`` on ``run``."""
    if action == "retry":
        return gettext("Run %(id)s was retried as run %(new)s (%(status)s).") % {
            "id": run.pk,
            "new": returned.pk,
            "status": returned.get_status_display().lower(),
        }
    if action == "cancel" and returned.status == RunStatus.IN_PROGRESS:
        return gettext("Run %(id)s was asked to cancel; it stops at its next checkpoint.") % {
            "id": run.pk
        }
    if action == "pause":
        return gettext("Run %(id)s was asked to pause; it pauses at its next checkpoint.") % {
            "id": run.pk
        }
    return gettext("Run %(id)s is now %(status)s.") % {
        "id": run.pk,
        "status": returned.get_status_display().lower(),
    }


class RunControlAdminMixin(_DataFlowRunModelAdmin):
    """Cancel, Pause, Resume and Retry: changelist actions and buttons on the run page."""

    def has_run_permission(self, request: HttpRequest, obj: DataFlowRun | None = None) -> bool:
        return bool(request.user.has_perm(RUN_PERMISSION))

    @admin.action(description=_("Cancel selected runs"), permissions=["run"])
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[DataFlowRun]) -> None:
        self._control_each(request, queryset, "cancel")

    @admin.action(description=_("Pause selected runs"), permissions=["run"])
    def pause_runs(self, request: HttpRequest, queryset: QuerySet[DataFlowRun]) -> None:
        self._control_each(request, queryset, "pause")

    @admin.action(description=_("Resume selected runs"), permissions=["run"])
    def resume_runs(self, request: HttpRequest, queryset: QuerySet[DataFlowRun]) -> None:
        self._control_each(request, queryset, "resume")

    @admin.action(description=_("Retry selected runs"), permissions=["run"])
    def retry_runs(self, request: HttpRequest, queryset: QuerySet[DataFlowRun]) -> None:
        self._control_each(request, queryset, "retry")

    def _control_each(
        self, request: HttpRequest, queryset: QuerySet[DataFlowRun], action: str
    ) -> None:
        for run in queryset.select_related("data_flow"):
            self._control(request, run, action)

    def _control(self, request: HttpRequest, run: DataFlowRun, action: str) -> None:
        if not self.has_run_permission(request, run):
            self.message_user(
                request,
                gettext("You may not control run %(id)s.") % {"id": run.pk},
                messages.ERROR,
            )
            return
        if action in {"resume", "retry"}:
            run_after_response()  # with the in-process backend: answer first, then run
        try:
            returned = self._control_recorded(request, run, action)
        except (InvalidRunState, RunAlreadyActive, EnqueueFailed) as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.log_change(request, run, [{"changed": {"fields": [gettext("status")]}}])
        self.message_user(request, describe_outcome(action, run, returned), messages.SUCCESS)

    @staticmethod
    def _control_recorded(request: HttpRequest, run: DataFlowRun, action: str) -> DataFlowRun:
        """Carry out ``action`` with its audit entry in the same transaction."""
        entry = AUDIT_ACTIONS[action]
        details = {"retry_of": run.pk} if action == "retry" else None

        def on_recorded(changed: DataFlowRun) -> None:
            record(request, entry, run=changed, details=details)

        if action == "retry":
            return FlowExecutor.retry(run, user=request.user, on_recorded=on_recorded)
        if action == "resume":
            return FlowExecutor.resume(run, on_recorded=on_recorded)
        with transaction.atomic():
            returned = CONTROLS[action](run)
            on_recorded(returned)
        return returned

    # -- buttons on the run page ---------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<path:object_id>/control/<str:action>/",
                self.admin_site.admin_view(require_POST(self.control_view)),
                name="{}_{}_control".format(*info),
            ),
            *super().get_urls(),
        ]

    def control_view(self, request: HttpRequest, object_id: str, action: str) -> HttpResponse:
        if action not in CONTROLS:
            raise PermissionDenied
        run = self.get_object(request, unquote(object_id))
        if run is None:
            raise Http404(gettext("No run with id %(id)s.") % {"id": object_id})
        if not (self.has_view_permission(request, run) and self.has_run_permission(request, run)):
            raise PermissionDenied
        self._control(request, run, action)
        return HttpResponseRedirect(
            reverse(
                f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
                args=[run.pk],
                current_app=self.admin_site.name,
            )
        )

    def run_controls_context(self, request: HttpRequest, run: DataFlowRun) -> dict[str, Any]:
        if not self.has_run_permission(request, run):
            return {}
        return {
            "dataflows_controls": [
                (
                    action,
                    CONTROL_LABELS[action],
                    reverse(
                        f"admin:{self.opts.app_label}_{self.opts.model_name}_control",
                        args=[run.pk, action],
                        current_app=self.admin_site.name,
                    ),
                )
                for action in available_controls(run)
            ]
        }


class DataFlowRunStepInline(_StepInline):
    """The run's steps, read-only: status, duration, result, error."""

    model = DataFlowRunStep
    extra = 0
    can_delete = False
    show_change_link = False
    fields = (
        "position",
        "name",
        "status_display",
        "started_at",
        "duration_display",
        "result_display",
    )
    readonly_fields = fields
    verbose_name_plural = _("steps")

    def has_add_permission(self, request: HttpRequest, obj: DataFlowRun | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DataFlowRun | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DataFlowRun | None = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: DataFlowRun | None = None) -> bool:
        # Whoever may see a run sees its steps (no separate permission to hand out).
        return bool(
            request.user.has_perm("dataflows.view_dataflowrun")
            or request.user.has_perm("dataflows.change_dataflowrun")
        )

    @admin.display(description=_("status"))
    def status_display(self, obj: DataFlowRunStep) -> str:
        return format_html(
            '<span class="dataflows-badge dataflows-badge--{}">{}</span>',
            obj.status,
            obj.get_status_display(),
        )

    @admin.display(description=_("duration"))
    def duration_display(self, obj: DataFlowRunStep) -> str:
        if obj.duration_ms is None:
            return "-"
        return gettext("%(ms)d ms") % {"ms": obj.duration_ms}

    @admin.display(description=_("result / error"))
    def result_display(self, obj: DataFlowRunStep) -> str:
        if obj.error_message:
            return format_html(
                '<pre class="dataflows-pre dataflows-invalid">{}</pre>', obj.error_message
            )
        if obj.result is None:
            return "-"
        return format_html(
            '<pre class="dataflows-pre">{}</pre>',
            json.dumps(obj.result, indent=2, ensure_ascii=False, cls=DjangoJSONEncoder),
        )


def progress_html(progress: dict[str, Any]) -> str:
    """A run's progress: a bar when the total is known, then "done of total — message"."""
    if not progress:
        return "-"
    done, total, message = progress.get("done"), progress.get("total"), progress.get("message")
    text = str(done)
    bar = SafeString("")
    if total:
        text = gettext("%(done)s of %(total)s") % {"done": done, "total": total}
        bar = format_html('<progress value="{}" max="{}"></progress> ', done, total)
    return format_html(
        '<span class="dataflows-progress">{}{}{}</span>',
        bar,
        text,
        f" — {message}" if message else "",
    )


# -- "Run with input…" on the data flow admin -----------------------------------------------


class RunInputForm(forms.Form):
    input = forms.CharField(
        label=_("Input"),
        widget=forms.Textarea(attrs={"rows": 10, "cols": 80, "class": "vLargeTextField"}),
        initial="{}",
        help_text=_('A JSON object the flow reads as self.input, such as {"day": "2026-01-01"}.'),
    )

    def clean_input(self) -> dict[str, Any]:
        text = self.cleaned_data["input"]
        try:
            value = load_json_text(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                _("Enter valid JSON: %(error)s (line %(line)d, column %(column)d)."),
                code="invalid",
                params={"error": exc.msg, "line": exc.lineno, "column": exc.colno},
            ) from None
        except ValueError as exc:  # nested too deep to decode
            raise ValidationError(str(exc), code="invalid") from None
        validate_run_input(value)
        assert isinstance(value, dict)
        return value


class RunWithInputAdminMixin(_DataFlowModelAdmin):
    """The "Run with input…" action: a form for the run's input, then ``trigger_run``."""

    def has_run_permission(self, request: HttpRequest, obj: DataFlow | None = None) -> bool:
        return bool(request.user.has_perm(RUN_PERMISSION))

    def _report_run(self, request: HttpRequest, data_flow: DataFlow, run: DataFlowRun) -> None:
        raise NotImplementedError  # DataFlowAdmin's, shared with "Run now"

    @admin.action(description=_("Run with input…"), permissions=["run"])
    def run_with_input(
        self, request: HttpRequest, queryset: QuerySet[DataFlow]
    ) -> HttpResponse | None:
        data_flows = list(queryset[:2])
        if len(data_flows) != 1:
            self.message_user(
                request,
                gettext("Select exactly one data flow to run with input."),
                messages.WARNING,
            )
            return None
        return HttpResponseRedirect(
            reverse(
                f"admin:{self.opts.app_label}_{self.opts.model_name}_run_with_input",
                args=[data_flows[0].pk],
                current_app=self.admin_site.name,
            )
        )

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<path:object_id>/run/",
                self.admin_site.admin_view(self.run_with_input_view),
                name="{}_{}_run_with_input".format(*info),
            ),
            *super().get_urls(),
        ]

    def run_with_input_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        data_flow = self.get_object(request, unquote(object_id))
        if data_flow is None:
            raise Http404(gettext("No data flow with id %(id)s.") % {"id": object_id})
        if not (
            self.has_view_permission(request, data_flow)
            and self.has_run_permission(request, data_flow)
        ):
            raise PermissionDenied
        form = RunInputForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            run_after_response()  # with the in-process backend: answer first, then run
            try:
                run = trigger_run(
                    data_flow,
                    trigger=RunTrigger.MANUAL,
                    user=request.user,
                    input=form.cleaned_data["input"],
                    on_recorded=lambda run: record(request, AuditAction.RUN_STARTED, run=run),
                )
            except (RunAlreadyActive, EnqueueFailed) as exc:
                form.add_error(None, str(exc))
            else:
                self._report_run(request, data_flow, run)
                return HttpResponseRedirect(
                    reverse(
                        f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
                        args=[data_flow.pk],
                        current_app=self.admin_site.name,
                    )
                )
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Run “%(name)s” with input") % {"name": data_flow.name},
            "opts": self.opts,
            "original": data_flow,
            "form": form,
            "flow_description": data_flow.flow_class.describe()
            if is_registered(data_flow.flow)
            else "",
        }
        return TemplateResponse(request, "admin/dataflows/dataflow/run_with_input.html", context)
