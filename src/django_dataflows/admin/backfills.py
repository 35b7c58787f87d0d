"""``BackfillAdmin``: backfills with their progress; starting one from a flow, cancelling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db import transaction
from django.db.models import (
    QuerySet,
)
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from django_dataflows.models import (
    AuditAction,
    Backfill,
)
from django_dataflows.permissions import (
    RUN_PERMISSION,
)

from .display import _admin_url
from .forms import BackfillForm
from .owners import record

if TYPE_CHECKING:
    from django.http import HttpRequest

    # Generic in django-stubs only; Django's classes are not subscriptable at run time.
    _BackfillModelAdmin = admin.ModelAdmin[Backfill]
else:
    _BackfillModelAdmin = admin.ModelAdmin


def backfill_progress(backfill: Backfill) -> str:
    return format_html(
        '<span class="dataflows-progress"><progress max="{}" value="{}"></progress>{}</span>',
        backfill.total or 1,
        backfill.done,
        gettext("%(done)s of %(total)s slots") % {"done": backfill.done, "total": backfill.total},
    )


@admin.register(Backfill)
class BackfillAdmin(_BackfillModelAdmin):
    """Backfills with their progress; new ones through the form (or the flows' action)."""

    form = BackfillForm
    list_display = (
        "id",
        "flow_link",
        "start",
        "end",
        "rerun",
        "status_display",
        "progress_display",
        "created_by",
        "created_at",
    )
    list_filter = ("status", "data_flow")
    list_select_related = ("data_flow", "created_by")
    actions = ("cancel_backfills",)

    class Media:
        css = {"all": ("django_dataflows/admin.css",)}

    def get_fields(self, request: HttpRequest, obj: Backfill | None = None) -> Any:
        if obj is None:
            return ("data_flow", "start", "end", "rerun", "force")
        return (
            "flow_link",
            "start",
            "end",
            "rerun",
            "status_display",
            "progress_display",
            "next_slot",
            "created_by",
            "created_at",
            "ended_at",
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Backfill | None = None) -> Any:
        return () if obj is None else self.get_fields(request, obj)

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form_class = super().get_form(request, obj, change, **kwargs)
        form_class.user = request.user  # type: ignore[attr-defined]
        return form_class

    def has_add_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(RUN_PERMISSION))

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_run_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(RUN_PERMISSION))

    def save_model(self, request: HttpRequest, obj: Backfill, form: Any, change: bool) -> None:
        # DataFlow.backfill() saved it while the form was checked, in this request's
        # transaction (the admin's change form is atomic): the entry commits with it.
        record(
            request,
            AuditAction.BACKFILL_STARTED,
            data_flow=obj.data_flow,
            details=obj.audit_details(),
        )

    @admin.display(description=_("data flow"), ordering="data_flow__name")
    def flow_link(self, obj: Backfill) -> str:
        return format_html(
            '<a href="{}">{}</a>',
            _admin_url("dataflow_change", obj.data_flow_id, site=self.admin_site),
            obj.data_flow.name,
        )

    @admin.display(description=_("status"), ordering="status")
    def status_display(self, obj: Backfill) -> str:
        return format_html(
            '<span class="dataflows-badge dataflows-badge--{}">{}</span>',
            obj.status,
            obj.get_status_display(),
        )

    @admin.display(description=_("progress"))
    def progress_display(self, obj: Backfill) -> str:
        return backfill_progress(obj)

    @admin.action(description=_("Cancel selected backfills"), permissions=["run"])
    def cancel_backfills(self, request: HttpRequest, queryset: QuerySet[Backfill]) -> None:
        cancelled = 0
        for backfill in queryset.select_related("data_flow"):
            with transaction.atomic():
                if backfill.cancel():
                    cancelled += 1
                    record(
                        request,
                        AuditAction.BACKFILL_CANCELLED,
                        data_flow=backfill.data_flow,
                        details=backfill.audit_details(),
                    )
        self.message_user(
            request,
            gettext("%(count)s backfills cancelled; their current runs finish.")
            % {"count": cancelled},
            messages.SUCCESS,
        )
