"""Rollups: per flow and hour, the counts and duration histogram that statistics read."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import models
from django.utils.translation import gettext_lazy as _

if TYPE_CHECKING:
    pass


class RunRollup(models.Model):
    """The finished runs of one flow created within one hour: counts and durations.

    Written by database triggers in the statement that finishes, soft-deletes or changes a
    run (no extra commit); statistics add these rows up instead of reading the runs. A row
    outlives its runs: deleting a run (``dataflows_prune``) keeps its contribution, a soft
    delete takes it out. ``dataflows_rollups --rebuild`` recomputes them from the runs.
    """

    data_flow = models.ForeignKey(
        "DataFlow", on_delete=models.CASCADE, related_name="+", verbose_name=_("data flow")
    )
    hour = models.DateTimeField(_("hour"), help_text=_("The hour the runs were created in."))
    success = models.IntegerField(_("success"), default=0)
    failed = models.IntegerField(_("failed"), default=0)
    cancelled = models.IntegerField(_("cancelled"), default=0)
    timed_out = models.IntegerField(_("timed out"), default=0)
    rated = models.IntegerField(
        _("rated with a duration"),
        default=0,
        help_text=_("Successful, failed and timed-out runs with a duration."),
    )
    duration_sum = models.BigIntegerField(_("duration sum (ms)"), default=0)
    duration_min = models.BigIntegerField(_("shortest (ms)"), null=True, blank=True)
    duration_max = models.BigIntegerField(_("longest (ms)"), null=True, blank=True)

    class Meta:
        verbose_name = _("run rollup")
        verbose_name_plural = _("run rollups")
        constraints = (
            models.UniqueConstraint(fields=("data_flow", "hour"), name="dataflows_rollup_hour"),
        )
        indexes = (models.Index(fields=("hour",), name="dataflows_rollup_hour_idx"),)

    def __str__(self) -> str:
        return f"{self.data_flow_id} {self.hour:%Y-%m-%d %H:00}"


class RunDurationBucket(models.Model):
    """How many rated runs of one flow and hour fell in one log bucket of duration.

    See :mod:`django_dataflows.histograms`: the percentiles of any set of hours and flows
    come from adding these counts, within 1 %.
    """

    data_flow = models.ForeignKey(
        "DataFlow", on_delete=models.CASCADE, related_name="+", verbose_name=_("data flow")
    )
    hour = models.DateTimeField(_("hour"))
    bucket = models.IntegerField(_("bucket"))
    count = models.IntegerField(_("count"), default=0)

    class Meta:
        verbose_name = _("run duration bucket")
        verbose_name_plural = _("run duration buckets")
        constraints = (
            models.UniqueConstraint(
                fields=("data_flow", "hour", "bucket"), name="dataflows_rollup_bucket"
            ),
        )
        indexes = (models.Index(fields=("hour",), name="dataflows_bucket_hour_idx"),)

    def __str__(self) -> str:
        return f"{self.data_flow_id} {self.hour:%Y-%m-%d %H:00} bucket {self.bucket}"
