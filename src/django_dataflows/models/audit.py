"""``AuditEntry``: who changed what, written in the change's own transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils.translation import gettext_lazy as _

from .access import _is_active_user
from .flows import DataFlow
from .runs import DataFlowRun

if TYPE_CHECKING:
    pass


class AuditSource(models.TextChoices):
    ADMIN = "admin", _("Admin")
    API = "api", _("API")
    COMMAND = "command", _("Command")


class AuditAction(models.TextChoices):
    FLOW_CREATED = "flow_created", _("Flow created")
    FLOW_CHANGED = "flow_changed", _("Flow changed")
    FLOW_DELETED = "flow_deleted", _("Flow deleted")
    FLOW_ENABLED = "flow_enabled", _("Flow enabled")
    FLOW_DISABLED = "flow_disabled", _("Flow disabled")
    RUN_STARTED = "run_started", _("Run started")
    RUN_CANCELLED = "run_cancelled", _("Run cancelled")
    RUN_PAUSED = "run_paused", _("Run paused")
    RUN_RESUMED = "run_resumed", _("Run resumed")
    RUN_RETRIED = "run_retried", _("Run retried")
    RUN_DELETED = "run_deleted", _("Run deleted")
    BACKFILL_STARTED = "backfill_started", _("Backfill started")
    BACKFILL_CANCELLED = "backfill_cancelled", _("Backfill cancelled")


class AuditEntryQuerySet(models.QuerySet["AuditEntry"]):
    def visible_to(self, user: Any) -> AuditEntryQuerySet:
        """Every entry with ``dataflows.view_auditentry``; else the entries of the flows
        ``user`` sees (an owner's own), so no entry names another owner's flow."""
        if _is_active_user(user) and user.has_perm("dataflows.view_auditentry"):
            return self
        if not _is_active_user(user):
            return self.none()
        return self.filter(data_flow__in=DataFlow.objects.visible_to(user).values("pk"))


class AuditEntry(models.Model):
    """Who changed what, from where: one row per change a person or a program made.

    Written in the transaction of the change it records (:mod:`django_dataflows.audit`),
    so a change that rolls back leaves no entry. The flow's name is kept, so the entry
    still says which flow it was after the flow is deleted.
    """

    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("actor"),
    )
    source = models.CharField(_("source"), max_length=20, choices=AuditSource.choices)
    action = models.CharField(_("action"), max_length=30, choices=AuditAction.choices)
    data_flow = models.ForeignKey(
        DataFlow,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("data flow"),
    )
    flow_name = models.CharField(_("flow name"), max_length=200, blank=True)
    run = models.ForeignKey(
        DataFlowRun,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("run"),
    )
    details = models.JSONField(_("details"), default=dict, blank=True, encoder=DjangoJSONEncoder)
    remote_addr = models.GenericIPAddressField(_("remote address"), null=True, blank=True)

    objects: ClassVar[AuditEntryQuerySet] = AuditEntryQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        verbose_name = _("audit entry")
        verbose_name_plural = _("audit entries")
        ordering = ("-created_at", "-pk")
        indexes = (
            models.Index(fields=("data_flow", "created_at"), name="dataflows_audit_flow_idx"),
        )

    def __str__(self) -> str:
        return f"{self.get_action_display()}: {self.flow_name or '-'}"
