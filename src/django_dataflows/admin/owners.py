"""Owners in the admin: each staff user sees and steers the flows they may, and every
change the admin makes is an audit entry.

The mixins scope the flow and run admins through the models' one rule
(``DataFlow.objects.visible_to(user)``, :meth:`~django_dataflows.models.DataFlow.user_may`):
another owner's flow or run is not in the changelist and its pages answer 404, as if it
did not exist. :class:`AuditEntryAdmin` shows the audit trail, read-only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db import transaction

from django_dataflows import audit
from django_dataflows.conf import app_settings
from django_dataflows.models import (
    AuditAction,
    AuditEntry,
    AuditSource,
    DataFlow,
    DataFlowRun,
    may_see_every_run,
    owns_a_flow,
)

if TYPE_CHECKING:
    from django.db.models import QuerySet
    from django.http import HttpRequest

    _ModelAdmin = admin.ModelAdmin[Any]
else:
    _ModelAdmin = admin.ModelAdmin

CHANGE_PERMISSION = "dataflows.change_dataflow"
RUN_PERMISSION = "dataflows.run_dataflow"


def record(
    request: HttpRequest,
    action: str,
    *,
    data_flow: DataFlow | None = None,
    run: DataFlowRun | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Record ``action`` by the request's user, inside the change's transaction."""
    audit.record(
        action,
        source=AuditSource.ADMIN,
        actor=request.user,
        data_flow=data_flow,
        run=run,
        details=details,
        remote_addr=audit.client_address(request),
    )


def _flow_of(obj: DataFlow | DataFlowRun) -> DataFlow:
    return obj.data_flow if isinstance(obj, DataFlowRun) else obj


def _owner_may(request: HttpRequest, obj: Any, permission: str, *, manage: bool) -> bool:
    """The owner's share of ``permission``: for ``obj``'s flow, or (``obj`` None) for
    some flow, which lets an owner reach the changelist and the actions."""
    if manage and not app_settings.OWNERS_MANAGE_OWN_FLOWS:
        return False
    if obj is None:
        return owns_a_flow(request.user)
    return _flow_of(obj).user_may(request.user, permission)


class OwnedObjectsAdminMixin(_ModelAdmin):
    """Shared by the flow and run admins: the changelist shows what the user may see."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset: Any = super().get_queryset(request)  # a DataFlow or DataFlowRun queryset
        scoped: QuerySet[Any] = queryset.visible_to(request.user)
        return scoped

    def has_module_permission(self, request: HttpRequest) -> bool:
        return super().has_module_permission(request) or owns_a_flow(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if super().has_view_permission(request, obj):
            return True
        return _owner_may(request, obj, "dataflows.view_dataflow", manage=False)

    def has_run_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Start runs of the flow (or control the run); without ``obj``: of some flow."""
        if request.user.has_perm(RUN_PERMISSION):
            return True
        return _owner_may(request, obj, RUN_PERMISSION, manage=True)


class OwnedFlowsAdminMixin(OwnedObjectsAdminMixin):
    """Owners edit their own flows; giving a flow to someone takes the change permission."""

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if super().has_change_permission(request, obj):
            return True
        return _owner_may(request, obj, CHANGE_PERMISSION, manage=True)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = tuple(super().get_readonly_fields(request, obj))
        if not request.user.has_perm(CHANGE_PERMISSION):
            fields += ("owner",)
        return fields

    def save_model(self, request: HttpRequest, obj: DataFlow, form: Any, change: bool) -> None:
        # The change view's transaction holds the save and its entry together.
        super().save_model(request, obj, form, change)
        if not change:
            record(request, AuditAction.FLOW_CREATED, data_flow=obj)
        elif form.changed_data:
            fields = sorted(form.changed_data)
            record(request, AuditAction.FLOW_CHANGED, data_flow=obj, details={"fields": fields})

    def delete_model(self, request: HttpRequest, obj: DataFlow) -> None:
        record(request, AuditAction.FLOW_DELETED, data_flow=obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        with transaction.atomic():
            for data_flow in queryset:
                record(request, AuditAction.FLOW_DELETED, data_flow=data_flow)
            super().delete_queryset(request, queryset)


class OwnedRunsAdminMixin(OwnedObjectsAdminMixin):
    """Run pages of the flows the user sees; deleting runs is recorded."""

    def get_list_filter(self, request: HttpRequest) -> Any:
        # The flow filter offers the flows of the listed runs, never every flow's name.
        return tuple(
            ("data_flow", admin.RelatedOnlyFieldListFilter) if entry == "data_flow" else entry
            for entry in super().get_list_filter(request)
        )

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and not may_see_every_run(request.user):
            return _flow_of(obj).user_may(request.user, "dataflows.view_dataflowrun")
        return super().has_view_permission(request, obj)

    def delete_model(self, request: HttpRequest, obj: DataFlowRun) -> None:
        record(request, AuditAction.RUN_DELETED, run=obj, details={"run_id": obj.pk})
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        with transaction.atomic():
            for run in queryset.select_related("data_flow"):
                record(request, AuditAction.RUN_DELETED, run=run, details={"run_id": run.pk})
            super().delete_queryset(request, queryset)


@admin.register(AuditEntry)
class AuditEntryAdmin(_ModelAdmin):
    """The audit trail: read-only, newest first, filtered by action, source and actor."""

    list_display = ("created_at", "actor", "source", "action", "flow_name", "run", "remote_addr")
    list_filter = ("action", "source", "created_at", "actor")
    search_fields = ("flow_name", "actor__username")
    list_select_related = ("actor", "run")
    date_hierarchy = "created_at"
    show_full_result_count = False
    readonly_fields = (
        "created_at",
        "actor",
        "source",
        "action",
        "data_flow",
        "flow_name",
        "run",
        "details",
        "remote_addr",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return AuditEntry.objects.visible_to(request.user).select_related("actor", "run")

    def has_module_permission(self, request: HttpRequest) -> bool:
        return super().has_module_permission(request) or owns_a_flow(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Owners read the entries of their own flows (the queryset keeps to those).
        return super().has_view_permission(request, obj) or owns_a_flow(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
