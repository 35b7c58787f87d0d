"""What a run records as it goes: its steps and its log lines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import (
    Q,
)
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_dataflows.clock import MillisecondsBetween

from .runs import DataFlowRun, _listened, _save_stamped, announce_runs_changed

if TYPE_CHECKING:
    pass


class StepStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    IN_PROGRESS = "in_progress", _("In progress")
    SUCCESS = "success", _("Success")
    FAILED = "failed", _("Failed")
    SKIPPED = "skipped", _("Skipped")
    CANCELLED = "cancelled", _("Cancelled")


class DataFlowRunStepQuerySet(models.QuerySet["DataFlowRunStep"]):
    def update(self, **kwargs: Any) -> int:
        """Update the rows, stamping ``updated_at`` from the database clock (live status)."""
        kwargs.setdefault("updated_at", Now())
        run_ids = list(self.values_list("run_id", flat=True)) if _listened() else []
        count = super().update(**kwargs)
        if count:
            announce_runs_changed(run_ids, self.db)
        return count

    def bulk_create(self, objs: Any, *args: Any, **kwargs: Any) -> list[DataFlowRunStep]:
        """Insert the steps; live sources that publish are told about their runs."""
        steps = super().bulk_create(objs, *args, **kwargs)
        announce_runs_changed([step.run_id for step in steps], self.db)
        return steps


class DataFlowRunStep(models.Model):
    """One step of a run: a method named in ``Flow.steps`` or a ``with self.step()`` block."""

    run = models.ForeignKey(
        DataFlowRun, on_delete=models.CASCADE, related_name="steps", verbose_name=_("run")
    )
    position = models.PositiveSmallIntegerField(_("position"))
    name = models.CharField(_("name"), max_length=200)
    status = models.CharField(
        _("status"), max_length=20, choices=StepStatus.choices, default=StepStatus.PENDING
    )
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    ended_at = models.DateTimeField(_("ended at"), null=True, blank=True)
    duration_ms = models.GeneratedField(
        expression=MillisecondsBetween("started_at", "ended_at"),
        output_field=models.BigIntegerField(_("duration (ms)"), null=True, blank=True),
        db_persist=True,
        verbose_name=_("duration (ms)"),
    )
    result = models.JSONField(_("result"), null=True, blank=True, encoder=DjangoJSONEncoder)
    error_message = models.TextField(_("error message"), blank=True)
    updated_at = models.DateTimeField(_("updated at"), db_default=Now(), editable=False)

    objects: ClassVar[DataFlowRunStepQuerySet] = DataFlowRunStepQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        verbose_name = _("run step")
        verbose_name_plural = _("run steps")
        ordering = ("run", "position")
        constraints = (
            models.UniqueConstraint(fields=("run", "position"), name="dataflows_step_position"),
            models.CheckConstraint(
                condition=Q(status__in=StepStatus.values), name="dataflows_step_status_valid"
            ),
        )

    def __str__(self) -> str:
        return f"{self.run_id} step {self.position}: {self.name} ({self.status})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save; an update of an existing row also stamps ``updated_at`` (database clock)."""
        _save_stamped(self, super().save, args, kwargs)
        announce_runs_changed([self.run_id], self._state.db or "default")


class DataFlowRunLog(models.Model):
    """One line of what a run logged or printed, in order (``position`` from 1)."""

    run = models.ForeignKey(
        DataFlowRun, on_delete=models.CASCADE, related_name="logs", verbose_name=_("run")
    )
    position = models.PositiveIntegerField(_("position"))
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    level = models.CharField(_("level"), max_length=10)
    logger = models.CharField(_("logger"), max_length=200, blank=True)
    message = models.TextField(_("message"), blank=True)
    step = models.CharField(_("step"), max_length=200, blank=True)

    class Meta:
        verbose_name = _("run log line")
        verbose_name_plural = _("run log lines")
        ordering = ("run", "position")
        constraints = (
            models.UniqueConstraint(fields=("run", "position"), name="dataflows_one_log_position"),
        )

    def __str__(self) -> str:
        return f"{self.level} {self.logger}: {self.message[:80]}"
