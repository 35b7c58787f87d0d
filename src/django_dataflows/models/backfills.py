"""``Backfill``: a range of past slots a flow runs in order, with its progress."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models
from django.db.models import (
    F,
    Q,
)
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .flows import DataFlow

if TYPE_CHECKING:
    pass


class BackfillStatus(models.TextChoices):
    RUNNING = "running", _("Running")
    DONE = "done", _("Done")
    CANCELLED = "cancelled", _("Cancelled")


class Backfill(models.Model):
    """Past slots of a flow's schedule to run, oldest first, one at a time.

    ``done`` of ``total`` slots are handled (run, or skipped as already succeeded);
    ``next_slot`` is the next one to consider (``None`` once every slot is handed out).
    """

    data_flow = models.ForeignKey(
        DataFlow, on_delete=models.CASCADE, related_name="backfills", verbose_name=_("data flow")
    )
    start = models.DateTimeField(_("start"), help_text=_("The first slot at or after it runs."))
    end = models.DateTimeField(_("end"), help_text=_("Slots before it run (exclusive)."))
    rerun = models.BooleanField(
        _("rerun"), default=False, help_text=_("Run slots that already succeeded again too.")
    )
    status = models.CharField(
        _("status"),
        max_length=20,
        choices=BackfillStatus.choices,
        default=BackfillStatus.RUNNING,
    )
    done = models.PositiveIntegerField(_("done"), default=0)
    total = models.PositiveIntegerField(_("total"), default=0)
    next_slot = models.DateTimeField(_("next slot"), null=True, blank=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("created by"),
    )
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    ended_at = models.DateTimeField(_("ended at"), null=True, blank=True)

    class Meta:
        verbose_name = _("backfill")
        verbose_name_plural = _("backfills")
        ordering = ("-created_at", "-pk")
        indexes = (
            models.Index(
                fields=("data_flow",),
                condition=Q(status="running"),
                name="dataflows_backfill_running_idx",
            ),
        )
        constraints = (
            models.CheckConstraint(
                condition=Q(end__gt=F("start")), name="dataflows_backfill_range"
            ),
            models.CheckConstraint(
                condition=Q(status__in=BackfillStatus.values), name="dataflows_backfill_status"
            ),
        )

    def __str__(self) -> str:
        return f"{self.data_flow} {self.start:%Y-%m-%d %H:%M} → {self.end:%Y-%m-%d %H:%M}"

    @property
    def percent(self) -> int:
        """How far it is, 0 to 100."""
        return 100 if not self.total else round(100 * self.done / self.total)

    def audit_details(self) -> dict[str, object]:
        """What the audit trail keeps of this backfill."""
        return {
            "backfill_id": self.pk,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "slots": self.total,
            "rerun": self.rerun,
        }

    def cancel(self) -> bool:
        """Stop after the current run (it finishes); ``False`` if it was not running."""
        cancelled = Backfill.objects.filter(pk=self.pk, status=BackfillStatus.RUNNING).update(
            status=BackfillStatus.CANCELLED, ended_at=Now()
        )
        self.refresh_from_db(fields=["status", "ended_at"])
        return bool(cancelled)
